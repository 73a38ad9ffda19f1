# DINO 4-scale, ResNet-50, COCO (values from IDEA-Research/DINO config/DINO/DINO_4scale.py).
_base_ = ['coco_transformer.py']

# ---- data / classes -------------------------------------------------------
num_classes = 91  # COCO max category id + 1 (labels are raw category ids)
dataset_file = 'coco'  # also a CLI flag (--dataset_file wins); 'coco' or 'synthetic'
fix_size = False  # also a CLI flag: train transform = flip + one fixed resize

# ---- optimisation -----------------------------------------------------------
lr = 0.0001
param_dict_type = 'default'
lr_backbone = 1e-05  # <= 0 freezes the backbone
lr_backbone_names = ['backbone.0']
batch_size = 2  # per process
weight_decay = 0.0001
epochs = 12
lr_drop = 11
save_checkpoint_interval = 1
clip_max_norm = 0.1
onecyclelr = False
multi_step_lr = False
lr_drop_list = [33, 45]

# ---- model / backbone -----------------------------------------------------
modelname = 'dino'
backbone = 'resnet50'
dilation = False
position_embedding = 'sine'
pe_temperatureH = 20
pe_temperatureW = 20
return_interm_indices = [1, 2, 3]
batch_norm_type = 'FrozenBatchNorm2d'  # or 'BatchNorm2d' (trainable BN, for small from-scratch models)
backbone_freeze_stem = True  # keep the stem and layer1 frozen, as DINO does with ImageNet weights

# ---- transformer ----------------------------------------------------------
enc_layers = 6
dec_layers = 6
pre_norm = False
dim_feedforward = 2048
hidden_dim = 256
dropout = 0.0
nheads = 8
num_queries = 900
query_dim = 4
num_feature_levels = 4
enc_n_points = 4
dec_n_points = 4
transformer_activation = 'relu'
decoder_sa_type = 'sa'
decoder_module_seq = ['sa', 'ca', 'ffn']
dec_pred_bbox_embed_share = True
dec_pred_class_embed_share = True
use_detached_boxes_dec_out = False

# ---- two-stage (mixed query selection) ------------------------------------
two_stage_type = 'standard'
two_stage_bbox_embed_share = False
two_stage_class_embed_share = False

# ---- post-processing --------------------------------------------------------
num_select = 300
nms_iou_threshold = -1  # <= 0: no NMS

# ---- matcher and losses ---------------------------------------------------
aux_loss = True
set_cost_class = 2.0
set_cost_bbox = 5.0
set_cost_giou = 2.0
matcher_type = 'HungarianMatcher'
cls_loss_coef = 1.0
bbox_loss_coef = 5.0
giou_loss_coef = 2.0
interm_loss_coef = 1.0
no_interm_box_loss = False
focal_alpha = 0.25

# ---- contrastive denoising ------------------------------------------------
use_dn = True
dn_number = 100
dn_box_noise_scale = 0.4  # DINO's scripts override this to 1.0
dn_label_noise_ratio = 0.5
embed_init_tgt = True
dn_labelbook_size = 91

# ---- EMA ------------------------------------------------------------------
use_ema = False
ema_decay = 0.9997
ema_epoch = 0

# ---- keys accepted for compatibility with DINO config files; they have no effect here
# (legacy DAB/DN-DETR options, Swin/ConvNeXt-only options, mask head, and options that
# DINO itself reads nowhere or only on code paths that are dead at these values).
lr_linear_proj_names = ['reference_points', 'sampling_offsets']  # only for param_dict_type='ddetr_in_mmdet'
lr_linear_proj_mult = 0.1
ddetr_lr_param = False
frozen_weights = None
use_checkpoint = False
backbone_freeze_keywords = None
unic_layers = 0
num_patterns = 0
pdetr3_bbox_embed_diff_each_layer = False
pdetr3_refHW = -1
random_refpoints_xy = False
fix_refpoints_hw = -1
dabdetr_yolo_like_anchor_update = False
dabdetr_deformable_encoder = False
dabdetr_deformable_decoder = False
use_deformable_box_attn = False
box_attn_type = 'roi_align'
dec_layer_number = None
decoder_layer_noise = False
dln_xy_noise = 0.2
dln_hw_noise = 0.2
add_channel_attention = False
add_pos_value = False
two_stage_pat_embed = 0
two_stage_add_query_num = 0
two_stage_learn_wh = False
two_stage_default_hw = 0.05
two_stage_keep_all_tokens = False
masks = False
mask_loss_coef = 1.0
dice_loss_coef = 1.0
enc_loss_coef = 1.0
match_unstable_error = True

# ---- keys added by this project -------------------------------------------
backbone_weights = 'IMAGENET1K_V1'  # torchvision weights name (torch.hub cache), a .pth path, or None = from scratch
dn_scalar = None  # DN-DETR's name for the denoising query budget; when set it replaces dn_number
dn_label_coef = 1.0  # loss_ce_dn weight = cls_loss_coef * dn_label_coef
dn_bbox_coef = 1.0  # loss_bbox_dn / loss_giou_dn weights = bbox/giou_loss_coef * dn_bbox_coef
msda_backend = 'auto'  # multi-scale deformable attention kernel: 'auto' (CUDA op if built, else PyTorch)
# AugDETR: Hybrid Attention Encoder (HAE)
use_hae = False
num_hae_layers = 2  # the first N encoder layers are hybrid
hae_dense_level = -1  # index into the encoder's levels for dense attention; -1 = coarsest
hae_ffn = False  # add an FFN after the dense attention (the reproduction's variant)
# AugDETR: Encoder-Mixing Cross-Attention (EMCA)
use_emca = False
emca_enc_layers = None  # None = all encoder layers; else a list of 0-based encoder layer indices
emca_shared_value_proj = False  # True = one value projection for all encoder layers (the reproduction's variant)
# evaluation / data robustness
eval_backend = 'pycocotools'  # or 'faster_coco_eval'
val_batch_size = 1  # DINO evaluates with batch 1 (padding changes AP)
skip_bad_images = False  # skip unreadable images with a warning instead of failing
# synthetic dataset (dataset_file='synthetic'); generated under synthetic_dir (None = ~/.cache default)
synthetic_dir = None
synthetic_num_train = 240
synthetic_num_val = 48
synthetic_image_size = 256
synthetic_seed = 0
