# DDQ-DETR on the tiny synthetic DINO of config/DINO/DINO_synthetic.py (3 decoder layers, 100 queries): the
# same model size and budget as `python main.py`, with DDQ-DETR's queries and losses (for
# scripts/ablation_main_table.sh). The optimiser and schedule stay the synthetic DINO's, so that the two runs
# differ only in the detector (DDQ-DETR's 2000-iteration warm-up would span the whole toy run).
_base_ = ['../DINO/DINO_synthetic.py']

modelname = 'ddq_detr'
embed_init_tgt = False  # the content queries are query_map(encoder memory)
ddq_enc_nms_iou = 0.8
ddq_dec_nms_iou = 0.8
ddq_distinct_set = 'released'
ddq_dense_ratio = 1.5  # 150 dense queries in training
ddq_dense_k = 4
ddq_dense_alpha = 1.0
ddq_dense_beta = 6.0
ddq_qfl_beta = 2.0
ddq_dense_cls_loss_coef = 1.0
ddq_dense_giou_loss_coef = 2.0
