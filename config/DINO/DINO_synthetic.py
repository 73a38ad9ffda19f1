# The default config of main.py: a tiny DINO that trains and evaluates on the CPU in under
# ten minutes (2 cores) on the built-in synthetic shapes dataset (generated locally on first
# use, nothing downloaded). Everything not set here is DINO_4scale.py's.
_base_ = ['DINO_4scale.py']

dataset_file = 'synthetic'
num_classes = 7  # category ids 1..6, so max id + 1
dn_labelbook_size = 7

# a small ResNet trained from scratch: trainable BatchNorm and no frozen stem
backbone = 'resnet18'
backbone_weights = None
batch_norm_type = 'BatchNorm2d'
backbone_freeze_stem = False

# from scratch on 240 images: one learning rate everywhere, 14 epochs, drop after 12 (measured on
# 2 cores: lr 2.5e-4 learns faster than 4e-4, and 8e-4 barely learns)
lr = 0.00025
lr_backbone = 0.00025
batch_size = 4
epochs = 14
lr_drop = 12
save_checkpoint_interval = 100
checkpoint_every_minutes = 0.0  # epochs of a few seconds: no mid-epoch checkpoints
clip_max_norm = 0.1
# a demo keeps small files: no numbered checkpoints, the best epoch's weights only (none when it is the last)
# and a last checkpoint.pth without optimizer state (see the README for the sizes)
keep_checkpoints = 0
final_checkpoint_optimizer = False

hidden_dim = 128
nheads = 8
dim_feedforward = 512
enc_layers = 3
dec_layers = 3
num_queries = 100
num_select = 100
dn_number = 50  # a doubled budget >= 100 keeps DINO's group rule (see dn_components.cdn_group_count)

# the 256 px images are trained at 144-176 px (val: 176) to keep CPU steps cheap; crops of at least
# the image size, so DINO's crop branch keeps whole images (it only resizes twice): in a 10-minute
# run whole objects teach more than crops (AP50 0.60 vs 0.46 after 12 epochs, same seed)
data_aug_scales = [144, 160, 176]
data_aug_max_size = 240
data_aug_scales2_resize = [112, 128, 144]
data_aug_scales2_crop = [256, 256]
