# The paper's DINO baseline (AugDETR Table 4, first row): DINO-4scale R50, 12 epochs, with the options of
# DINO's training scripts that the AugDETR reproduction's command passes (dn_box_noise_scale 1.0; its other
# options, dn_scalar=100 embed_init_tgt=True dn_label_coef=1.0 dn_bbox_coef=1.0 use_ema=False, are
# DINO_4scale.py's values already).
_base_ = ['../DINO/DINO_4scale.py']

dn_box_noise_scale = 1.0
