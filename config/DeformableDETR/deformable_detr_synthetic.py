# Deformable DETR on the built-in synthetic shapes dataset (generated locally on first use, nothing
# downloaded): trains and evaluates on the CPU like the default run (config/DINO/DINO_synthetic.py), with
# the same small backbone, sizes and budget, so the two compare run for run. Everything not set here is
# deformable_detr.py's (multi-scale; with_box_refine / two_stage and --use_hae / --use_emca work here too).
_base_ = ['deformable_detr.py']

dataset_file = 'synthetic'
num_classes = 7  # category ids 1..6, so max id + 1

# a small ResNet trained from scratch: trainable BatchNorm and no frozen stem
backbone = 'resnet18'
backbone_weights = None
batch_norm_type = 'BatchNorm2d'
backbone_freeze_stem = False

# from scratch on 240 images: one learning rate for the backbone and the rest (DINO_synthetic.py's), the
# reference-point and sampling-offset layers at 0.1 of it as in every Deformable DETR run; 14 epochs, drop
# after 12
lr = 0.00025
lr_backbone = 0.00025
batch_size = 4
val_batch_size = 1  # as DINO_synthetic.py
epochs = 14
lr_drop = 12
save_checkpoint_interval = 100
checkpoint_every_minutes = 0.0  # epochs of a few seconds: no mid-epoch checkpoints
# small files, as the default run's: the best epoch's weights only, a last checkpoint.pth without optimizer state
keep_checkpoints = 0
final_checkpoint_optimizer = False
clip_max_norm = 0.1

hidden_dim = 128
nheads = 8
dim_feedforward = 512
enc_layers = 3
dec_layers = 3
dropout = 0.0  # DINO_synthetic.py's (DINO trains without dropout): a short run from scratch
num_queries = 100
num_select = 100

# the 256 px images trained at 144-176 px (val: 176), as DINO_synthetic.py
data_aug_scales = [144, 160, 176]
data_aug_max_size = 240
data_aug_scales2_resize = [112, 128, 144]
data_aug_scales2_crop = [256, 256]
