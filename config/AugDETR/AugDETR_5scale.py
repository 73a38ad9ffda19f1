# AugDETR on DINO-5scale R50, 12 epochs: HAE and EMCA on DINO_5scale.py with the options of DINO's
# training scripts (dn_box_noise_scale 1.0). HAE's dense attention is on the coarsest level (stride 64).
_base_ = ['../DINO/DINO_5scale.py']

dn_box_noise_scale = 1.0
use_hae = True
use_emca = True
