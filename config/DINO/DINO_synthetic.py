# The default config of main.py: a tiny DINO that trains on CPU in minutes on the built-in
# synthetic dataset (generated locally, nothing downloaded). Starting values; tune freely.
_base_ = ['DINO_4scale.py']

dataset_file = 'synthetic'
num_classes = 7
dn_labelbook_size = 7

# small from-scratch backbone with trainable BatchNorm
backbone = 'resnet18'
batch_norm_type = 'BatchNorm2d'
backbone_freeze_stem = False

lr = 0.0002
lr_backbone = 0.0002
batch_size = 4
epochs = 24
lr_drop = 20
clip_max_norm = 0.1

hidden_dim = 128
nheads = 8
dim_feedforward = 512
enc_layers = 3
dec_layers = 3
num_queries = 100
num_select = 100
dn_number = 50  # a doubled budget >= 100 keeps DINO's group rule (see dn_components.cdn_group_count)

data_aug_scales = [224, 240, 256, 272, 288]
data_aug_max_size = 400
data_aug_scales2_resize = [200, 240, 280]
data_aug_scales2_crop = [180, 280]
