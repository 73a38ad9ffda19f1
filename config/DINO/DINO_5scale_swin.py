# DINO 5-scale, Swin-L (384, ImageNet-22k), COCO: DINO_4scale_swin.py plus the stride-4 level,
# as DINO's DINO_5scale_swin.py (and DINO_5scale.py's one image per GPU).
_base_ = ['DINO_4scale_swin.py']

batch_size = 1  # per process
return_interm_indices = [0, 1, 2, 3]
num_feature_levels = 5
