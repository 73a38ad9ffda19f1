# DETR R50, the 300-epoch schedule of DETR's ablations (lr drop at 200).
_base_ = ['detr_r50.py']

epochs = 300
lr_drop = 200
