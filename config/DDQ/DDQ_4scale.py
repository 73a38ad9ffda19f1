# DDQ-DETR 4-scale, ResNet-50, 12 epochs, COCO: DINO_4scale.py (the model, CDN, matching and losses) with
# DDQ-DETR's queries and losses and its recipe (jshilong/DDQ ddq_detr branch, mmdetection's
# ddq-detr-4scale_r50_8xb2-12e_coco.py): AdamW lr 2e-4, weight decay 0.05, linear warm-up over the first
# 2000 iterations from 1e-4x, lr drop after epoch 11. This is the defaults file of modelname='ddq_detr': it
# sets every key DDQ-DETR uses. `--use_hae --use_emca` add AugDETR.
_base_ = ['../DINO/DINO_4scale.py']

modelname = 'ddq_detr'

# ---- recipe (what differs from DINO-4scale) -------------------------------------
lr = 0.0002
weight_decay = 0.05
lr_warmup_iters = 2000
lr_warmup_factor = 0.0001
dn_box_noise_scale = 1.0  # DINO's scripts' value, which DDQ-DETR trains with too

# ---- DDQ-DETR ---------------------------------------------------------------------
embed_init_tgt = False  # the content queries are query_map(encoder memory), not learned embeddings
ddq_enc_nms_iou = 0.8  # class-agnostic NMS over all encoder proposals, then the first num_queries survivors
ddq_dec_nms_iou = 0.8  # NMS over the distinct queries after decoder layers 1..5
ddq_distinct_set = 'released'  # the official code's keep-set (jshilong/DDQ#14); 'tracked': the kept queries
ddq_dense_ratio = 1.5  # dense queries in training: int(1.5 * 900) = 1350, no NMS
ddq_dense_k = 4  # dense auxiliary loss: up to 4 queries per ground truth
ddq_dense_alpha = 1.0  # alignment metric s^alpha * IoU^beta
ddq_dense_beta = 6.0
ddq_qfl_beta = 2.0  # Quality Focal Loss exponent
ddq_dense_cls_loss_coef = 1.0
ddq_dense_giou_loss_coef = 2.0
