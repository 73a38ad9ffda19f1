# DETR-DC5 R101, 500 epochs (the released detr-r101-dc5-a2e86def.pth, 44.9 AP).
_base_ = ['detr_r50_dc5.py']

backbone = 'resnet101'
