# AugDETR's parts on the synthetic Deformable DETR run (deformable_detr_synthetic.py): trains on the CPU like the
# default run. The same model as `-c config/DeformableDETR/deformable_detr_synthetic.py --use_hae --use_emca`.
_base_ = ['deformable_detr_synthetic.py']

use_hae = True
use_emca = True
