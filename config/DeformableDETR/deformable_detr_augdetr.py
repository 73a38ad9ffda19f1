# AugDETR's parts on Deformable DETR (multi-scale, R50, COCO; nobody has published this pairing): the
# first num_hae_layers encoder layers are hybrid (dense attention on the coarsest level first) and every
# decoder layer's cross-attention is EMCA over all encoder layers. The same model as
# `-c config/DeformableDETR/deformable_detr.py --use_hae --use_emca`. From the official multi-scale file:
#   --pretrain_model_path r50_deformable_detr-checkpoint.pth  (only HAE's and EMCA's new tensors are missing)
_base_ = ['deformable_detr.py']

use_hae = True
use_emca = True
