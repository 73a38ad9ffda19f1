# Single-scale Deformable DETR with a dilated C5 (DC5, stride 16), R50, 50 epochs, COCO (official
# configs/r50_deformable_detr_single_scale_dc5.sh, --num_feature_levels 1 --dilation): 41.5 AP.
_base_ = ['deformable_detr_single_scale.py']

dilation = True
