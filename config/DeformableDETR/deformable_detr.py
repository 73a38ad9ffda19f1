# Deformable DETR, multi-scale, ResNet-50, COCO, 50 epochs (fundamentalvision/Deformable-DETR
# configs/r50_deformable_detr.sh: main.py's defaults): AugDETR's Table 1 row, 44.5 AP. This file
# defines every config key of modelname='deformable_detr' (a config that does not set a key takes the
# value written here); what each key means: `python main.py -c THIS --print_config`.
# Its state_dict is the official one key for key: the released files load with --resume /
# --pretrain_model_path (README, "Deformable DETR").
_base_ = ['../DINO/coco_transformer.py', '../common/checkpoints.py']

# ---- data / classes -------------------------------------------------------
num_classes = 91  # COCO max category id + 1 (labels are raw category ids)
dataset_file = 'coco'
fix_size = False
val_batch_size = 2  # the official evaluation batch (its --batch_size 2): padding changes AP a little

# ---- optimisation (the official main.py's defaults) ---------------------------
lr = 0.0002
lr_backbone = 2e-05
lr_backbone_names = ['backbone.0']
param_dict_type = 'ddetr_in_mmdet'  # three groups: the rest, the backbone, and the two below at lr x 0.1
lr_linear_proj_names = ['reference_points', 'sampling_offsets']
lr_linear_proj_mult = 0.1
lr_warmup_iters = 0  # linear warm-up over this many optimizer steps (0: none, as the official recipe)
lr_warmup_factor = 0.0001  # the warm-up's first lr multiplier
# total batch 32, as all official models: 8 processes x 4 (the official runs: 16 GPUs x 2)
batch_size = 4
weight_decay = 0.0001
epochs = 50
lr_drop = 40
save_checkpoint_interval = 5  # the official run keeps every 5th epoch
clip_max_norm = 0.1
onecyclelr = False
multi_step_lr = False
lr_drop_list = [33, 45]  # unused (multi_step_lr=False)
use_ema = False
ema_decay = 0.9997
ema_epoch = 0

# ---- model / backbone -----------------------------------------------------
modelname = 'deformable_detr'
backbone = 'resnet50'
backbone_weights = 'IMAGENET1K_V1'
backbone_dir = None
use_checkpoint = False
backbone_freeze_keywords = None
backbone_freeze_stem = True  # the stem and layer1 stay frozen, as in the official backbone
batch_norm_type = 'FrozenBatchNorm2d'
dilation = False
return_interm_indices = [1, 2, 3]  # strides 8, 16, 32, plus one stride-2 conv on C5
position_embedding = 'sine'
pe_temperatureH = 10000
pe_temperatureW = 10000
pe_offset = -0.5  # (count - 0.5) / valid size: Deformable DETR's sine encoding

# ---- transformer ----------------------------------------------------------
enc_layers = 6
dec_layers = 6
dim_feedforward = 1024
hidden_dim = 256
dropout = 0.1
nheads = 8
num_queries = 300
num_feature_levels = 4
enc_n_points = 4
dec_n_points = 4
transformer_activation = 'relu'
with_box_refine = False  # + iterative bounding box refinement: deformable_detr_refine.py
two_stage = False  # ++ two-stage: deformable_detr_two_stage.py
msda_backend = 'auto'

# ---- matcher, losses, post-processing -------------------------------------
aux_loss = True
set_cost_class = 2.0
set_cost_bbox = 5.0
set_cost_giou = 2.0
cls_loss_coef = 2.0
bbox_loss_coef = 5.0
giou_loss_coef = 2.0
focal_alpha = 0.25
num_select = 100  # the official PostProcess keeps the top 100 of queries x classes
nms_iou_threshold = -1

# ---- AugDETR's parts (off; deformable_detr_augdetr.py turns them on) --------
use_hae = False
num_hae_layers = 2
hae_dense_level = -1
hae_ffn = False
use_emca = False
emca_enc_layers = None
emca_shared_value_proj = False
emca_gate_input = 'content_pos'  # the gates read the query as the offsets do; 'content' = content only (reproduction)
emca_output_proj = 'mixed'  # project once after mixing; 'per_layer' = per encoder layer, bias scaled (reproduction)
emca_gate_init = 'mean'  # every gate starts at 1/L; 'xavier' = about 0.5 each (reproduction)

# ---- runtime, evaluation, synthetic data -----------------------------------
keep_freed_host_memory = True
eval_backend = 'pycocotools'
skip_bad_images = False
synthetic_dir = None
synthetic_num_train = 240
synthetic_num_val = 48
synthetic_image_size = 256
synthetic_seed = 0
