# AugDETR on the default synthetic run (config/DINO/DINO_synthetic.py): trains on the CPU in minutes.
_base_ = ['../DINO/DINO_synthetic.py']

use_hae = True
use_emca = True
