# AlignDETR on DINO-4scale R50, 24 epochs (the 2x schedule: lr drop after epoch 20, as DINO's 24-epoch recipe).
_base_ = ['AlignDETR_4scale.py']

epochs = 24
lr_drop = 20
