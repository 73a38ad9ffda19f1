# DDQ-DETR 5-scale, ResNet-50, 12 epochs, COCO: DDQ_4scale.py plus the stride-4 (C2) level (mmdetection's
# ddq-detr-5scale_r50_8xb2-12e_coco.py: still 2 images per GPU x 8).
_base_ = ['DDQ_4scale.py']

return_interm_indices = [0, 1, 2, 3]
num_feature_levels = 5
