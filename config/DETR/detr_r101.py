# DETR R101, 500 epochs (the released detr-r101-2c7b67e5.pth, 43.5 AP).
_base_ = ['detr_r50.py']

backbone = 'resnet101'
