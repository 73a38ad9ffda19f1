# DINO 4-scale, ConvNeXt-XL (ImageNet-22k), COCO: DINO_4scale_swin.py with DINO's ConvNeXt backbone
# (timm's ConvNeXt, DINO's per-output norms). It starts from convnext_xlarge_22k_224.pth in backbone_dir.
_base_ = ['DINO_4scale_swin.py']

backbone = 'convnext_xlarge_22k'
backbone_dir = None  # the folder with convnext_xlarge_22k_224.pth (--options backbone_dir=...)
