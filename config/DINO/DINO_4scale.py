# DINO 4-scale, ResNet-50, COCO (values from IDEA-Research/DINO config/DINO/DINO_4scale.py).
# This file (with its _base_ files) defines every config key of DINO: a config that does not set a key (an
# official DINO file lacks this project's keys) takes the value written here. What each key
# may be and means: util/config_schema.py, or `python main.py -c CONFIG --print_config`.
# DINO keys this project does not implement (DAB/DN-DETR leftovers, masks, Swin options...)
# are accepted only at DINO's value (util/config_schema.NOT_IMPLEMENTED) and so not listed here.
_base_ = ['coco_transformer.py', '../common/checkpoints.py']

# ---- data / classes -------------------------------------------------------
num_classes = 91  # COCO max category id + 1 (labels are raw category ids)
dataset_file = 'coco'  # also a CLI flag (--dataset_file wins)
fix_size = False  # also a CLI flag: train transform = flip + one fixed resize

# ---- optimisation -----------------------------------------------------------
lr = 0.0001
lr_backbone = 1e-05  # <= 0 freezes the backbone
lr_backbone_names = ['backbone.0']
param_dict_type = 'default'  # DINO's groups: backbone and the rest (the two keys below are not read)
lr_linear_proj_names = ['reference_points', 'sampling_offsets']
lr_linear_proj_mult = 0.1
batch_size = 2  # per process
weight_decay = 0.0001
epochs = 12
lr_drop = 11
save_checkpoint_interval = 1
clip_max_norm = 0.1

# ---- checkpoints (engine/checkpoint_policy.py) ----------------------------------
onecyclelr = False
multi_step_lr = False
lr_drop_list = [33, 45]
lr_warmup_iters = 0  # linear warm-up over this many optimizer steps (0: none, DINO's recipe)
lr_warmup_factor = 0.0001  # the warm-up's first lr multiplier (mmdetection's LinearLR start_factor)

# ---- model / backbone -----------------------------------------------------
modelname = 'dino'
backbone = 'resnet50'
dilation = False
position_embedding = 'sine'
pe_temperatureH = 20
pe_temperatureW = 20
pe_offset = 0.0  # added to the valid-pixel count of the sine encoding (Deformable DETR: -0.5)
return_interm_indices = [1, 2, 3]
batch_norm_type = 'FrozenBatchNorm2d'  # or 'BatchNorm2d' (trainable BN, for small from-scratch models)
backbone_freeze_stem = True  # keep the stem and layer1 frozen, as DINO does with ImageNet weights

# ---- transformer ----------------------------------------------------------
enc_layers = 6
dec_layers = 6
dim_feedforward = 2048
hidden_dim = 256
dropout = 0.0
nheads = 8
num_queries = 900
num_feature_levels = 4
enc_n_points = 4
dec_n_points = 4
transformer_activation = 'relu'
dec_pred_bbox_embed_share = True
dec_pred_class_embed_share = True
use_detached_boxes_dec_out = False

# ---- two-stage (mixed query selection) ------------------------------------
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

# ---- keys added by this project -------------------------------------------
backbone_weights = 'IMAGENET1K_V1'  # torchvision weights name (torch.hub cache), a .pth path, or None = from scratch
# Swin/ConvNeXt: folder of the ImageNet files under DINO's names (swin_tiny_patch4_window7_224.pth, ...)
backbone_dir = None
use_checkpoint = False  # Swin/ConvNeXt: activation checkpointing per block (DINO's Swin configs: True)
backbone_freeze_keywords = None  # Swin/ConvNeXt: freeze backbone parameters whose name contains any of these
dn_scalar = None  # DN-DETR's name for the denoising query budget; when set it replaces dn_number
dn_label_coef = 1.0  # loss_ce_dn weight = cls_loss_coef * dn_label_coef
dn_bbox_coef = 1.0  # loss_bbox_dn / loss_giou_dn weights = bbox/giou_loss_coef * dn_bbox_coef
msda_backend = 'auto'  # multi-scale deformable attention kernel: 'auto' (CUDA op if built, else PyTorch)
keep_freed_host_memory = True  # CPU runs: freed tensor memory stays in the process (util/host_memory.py)
# AugDETR: Hybrid Attention Encoder (HAE)
use_hae = False
num_hae_layers = 2  # the first N encoder layers are hybrid
hae_dense_level = -1  # index into the encoder's levels for dense attention; -1 = coarsest
hae_ffn = False  # add an FFN after the dense attention (the reproduction's variant)
# AugDETR: Encoder-Mixing Cross-Attention (EMCA)
use_emca = False
emca_enc_layers = None  # None = all encoder layers; else a list of 0-based encoder layer indices
emca_shared_value_proj = False  # True = one value projection for all encoder layers (the reproduction's variant)
emca_gate_input = 'content_pos'  # the gates read the query as the offsets do; 'content' = content only (reproduction)
emca_output_proj = 'mixed'  # project once after mixing; 'per_layer' = per encoder layer, bias scaled (reproduction)
emca_gate_init = 'mean'  # every gate starts at 1/L; 'xavier' = about 0.5 each (reproduction)
# AlignDETR: its loss and matching on this model (config/AlignDETR/)
criterion_type = 'dino'  # 'aligndetr': IA-BCE, one-to-k matching, rank weights
aligndetr_alpha = 0.25  # quality t = p^alpha * IoU^(1 - alpha)
aligndetr_gamma = 2.0  # unmatched elements: p^gamma * BCE(p, 0)
aligndetr_tau = 1.5  # rank weight exp(-rank / tau)
o2m_k = [2, 2, 2, 2, 2, 2, 1]  # matches per ground truth: encoder proposals, decoder layers 1..6
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
