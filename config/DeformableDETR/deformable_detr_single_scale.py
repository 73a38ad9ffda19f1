# Single-scale Deformable DETR, R50, 50 epochs, COCO (official configs/r50_deformable_detr_single_scale.sh,
# --num_feature_levels 1): 39.4 AP. Only C5 (stride 32) enters the encoder.
_base_ = ['deformable_detr.py']

return_interm_indices = [3]
num_feature_levels = 1
