# DETR R50, COCO, 500 epochs (facebookresearch/detr's main.py defaults; the released detr-r50-e632da11.pth,
# 42.0 AP). DETR's defaults file: it sets every key DETR uses, and a DETR config that does not set a key
# takes the value written here. What each key may be and means: `python main.py -c CONFIG --print_config`.
# Augmentation (flip, multi-scale resize / crop-and-resize, val 800 x 1333) is DETR's, which DINO kept.
_base_ = ['../DINO/coco_transformer.py', '../common/checkpoints.py']

# ---- data / classes -------------------------------------------------------
num_classes = 91  # COCO max category id + 1 (labels are raw category ids); the head adds the no-object class
dataset_file = 'coco'  # also a CLI flag (--dataset_file wins)
fix_size = False
# DETR R50 was trained and evaluated with 2 images per GPU; padding it never saw in training changes AP, so
# evaluate as it was reported (1 image per batch gives 42.1 / 21.4 / 46.0 / 61.1 instead of 42.0 / 20.5 /
# 45.8 / 61.1, facebookresearch/detr#217)
val_batch_size = 2
skip_bad_images = False
eval_backend = 'pycocotools'
synthetic_dir = None
synthetic_num_train = 240
synthetic_num_val = 48
synthetic_image_size = 256
synthetic_seed = 0

# ---- optimisation -----------------------------------------------------------
lr = 0.0001
lr_backbone = 1e-05  # <= 0 freezes the backbone
lr_backbone_names = ['backbone.0']
batch_size = 2  # per process (DETR: 32 GPUs x 2 images)
weight_decay = 0.0001
epochs = 500
lr_drop = 400
param_dict_type = 'default'  # two groups: the backbone (lr_backbone) and the rest (the two keys below are not read)
lr_linear_proj_names = ['reference_points', 'sampling_offsets']
lr_linear_proj_mult = 0.1
lr_warmup_iters = 0  # linear warm-up over this many optimizer steps (0: none, as the official recipe)
lr_warmup_factor = 0.0001  # the warm-up's first lr multiplier
save_checkpoint_interval = 100
clip_max_norm = 0.1
onecyclelr = False
multi_step_lr = False
lr_drop_list = [400]
use_ema = False
ema_decay = 0.9997
ema_epoch = 0

# ---- model / backbone -----------------------------------------------------
modelname = 'detr'
backbone = 'resnet50'
backbone_weights = 'IMAGENET1K_V1'  # torchvision weights name (torch.hub cache), a .pth path, or None
backbone_dir = None
use_checkpoint = False
backbone_freeze_keywords = None
backbone_freeze_stem = True  # the stem and layer1 stay frozen, as DETR trains them
batch_norm_type = 'FrozenBatchNorm2d'
dilation = False  # True: DC5 (the last stage dilated, stride 16)
return_interm_indices = [3]  # layer4 only (stride 32)
position_embedding = 'sine'
pe_temperatureH = 10000  # DETR's sine encoding: temperature 10000, normalised, no offset
pe_temperatureW = 10000
pe_offset = 0.0  # no offset (Deformable DETR: -0.5, pixel centres)

# ---- transformer ----------------------------------------------------------
enc_layers = 6
dec_layers = 6
dim_feedforward = 2048
hidden_dim = 256
dropout = 0.1
nheads = 8
num_queries = 100
transformer_activation = 'relu'
pre_norm = False  # the released models are post-norm

# ---- post-processing --------------------------------------------------------
num_select = 100  # one detection per query (all 100 queries), as DETR evaluates
nms_iou_threshold = -1  # <= 0: no NMS

# ---- matcher and losses ---------------------------------------------------
aux_loss = True
set_cost_class = 1.0
set_cost_bbox = 5.0
set_cost_giou = 2.0
cls_loss_coef = 1.0
bbox_loss_coef = 5.0
giou_loss_coef = 2.0
eos_coef = 0.1  # weight of the no-object class

# ---- runtime ----------------------------------------------------------------
keep_freed_host_memory = True
