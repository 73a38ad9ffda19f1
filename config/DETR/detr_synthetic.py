# A small DETR that trains and evaluates on the CPU on the built-in synthetic shapes dataset (generated
# locally on first use, nothing downloaded): `python main.py -c config/DETR/detr_synthetic.py`.
# Everything not set here is detr_r50.py's.
_base_ = ['detr_r50.py']

dataset_file = 'synthetic'
num_classes = 7  # category ids 1..6, so max id + 1
val_batch_size = 1

# a small ResNet trained from scratch: trainable BatchNorm and no frozen stem
backbone = 'resnet18'
backbone_weights = None
batch_norm_type = 'BatchNorm2d'
backbone_freeze_stem = False

lr = 0.0002
lr_backbone = 0.0002
batch_size = 4
epochs = 14
lr_drop = 12
save_checkpoint_interval = 100
checkpoint_every_minutes = 0.0  # epochs of a few seconds: no mid-epoch checkpoints
# small files, as the default run's: the best epoch's weights only, a last checkpoint.pth without optimizer state
keep_checkpoints = 0
final_checkpoint_optimizer = False

hidden_dim = 128
nheads = 8
dim_feedforward = 512
enc_layers = 3
dec_layers = 3
dropout = 0.0
num_queries = 30
num_select = 30

# the 256 px images trained at 144-176 px (val: 176), as config/DINO/DINO_synthetic.py
data_aug_scales = [144, 160, 176]
data_aug_max_size = 240
data_aug_scales2_resize = [112, 128, 144]
data_aug_scales2_crop = [256, 256]
