# DETR-DC5 R50, 500 epochs (the released detr-r50-dc5-f0fb7ef5.pth, 43.3 AP): the last ResNet stage dilated
# (stride 16), trained with 1 image per GPU (64 GPUs) and evaluated so: more images per batch lose AP.
_base_ = ['detr_r50.py']

dilation = True
batch_size = 1
val_batch_size = 1
