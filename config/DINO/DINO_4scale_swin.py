# DINO 4-scale, Swin-L (384, ImageNet-22k), COCO: DINO_4scale.py with DINO's DINO_4scale_swin.py changes.
# The backbone is timm's Swin with DINO's arithmetic (models/common/backbones/timm_backbone.py). It starts from
# swin_large_patch4_window12_384_22k.pth in backbone_dir; official DINO Swin checkpoints load with
# --resume / --pretrain_model_path directly (converted on load) or after tools/convert_checkpoint.py.
_base_ = ['DINO_4scale.py']

backbone = 'swin_L_384_22k'
backbone_weights = 'imagenet'  # any name = DINO's ImageNet file of the backbone in backbone_dir
backbone_dir = None  # the folder with swin_large_patch4_window12_384_22k.pth (--options backbone_dir=...)
return_interm_indices = [1, 2, 3]
use_checkpoint = True  # activation checkpointing per Swin block, as DINO's Swin configs
