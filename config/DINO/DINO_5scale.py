# DINO 5-scale, ResNet-50, COCO: DINO_4scale.py plus the stride-4 (C2) level, as DINO's DINO_5scale.py.
_base_ = ['DINO_4scale.py']

batch_size = 1  # per process (DINO trains 5-scale with 1 image per GPU x 16 GPUs)
return_interm_indices = [0, 1, 2, 3]
num_feature_levels = 5
