"""Config keys of the deformable-attention family (`deformable`: every detector built on the
deformable transformer) and of DINO itself (`dino`: its heads, two-stage selection and denoising).

DINO's official config files also carry keys this project does not implement (DAB/DN-DETR leftovers,
masks, ...): they are accepted at DINO's value only (`NOT_IMPLEMENTED`), so an official file loads.
"""
from util.config_schema import KeyGroup, bool_key, choice_key, float_key, int_key, prob_key

from ..common.backbones.table import STAGE_STRIDES


def _levels_cover_stages(cfg):
    n_stages = len(cfg["return_interm_indices"])
    if cfg["num_feature_levels"] < n_stages:
        return (f"num_feature_levels={cfg['num_feature_levels']} is below the {n_stages} stages of "
                f"return_interm_indices={cfg['return_interm_indices']}; raise it")
    return None


DEFORMABLE_KEYS = KeyGroup("deformable", "deformable attention (DINO and its family)", {
    "num_feature_levels": int_key(f"feature levels (backbone stages, strides {STAGE_STRIDES}, + extra stride-2 "
                                  f"convs)", 1, model=True),
    "enc_n_points": int_key("deformable sampling points per head and level, encoder", 1, model=True),
    "dec_n_points": int_key("deformable sampling points per head and level, decoder", 1, model=True),
    "focal_alpha": prob_key("focal loss alpha (matching cost and classification loss)"),
    "msda_backend": choice_key("deformable attention kernel; 'auto' defers to MSDA_BACKEND, else compiled if it "
                               "loads", "auto", "compiled", "pytorch"),
}, relations=(_levels_cover_stages,))


def _labelbook_holds_classes(cfg):
    if cfg["dn_labelbook_size"] < cfg["num_classes"] - 1:
        return (f"dn_labelbook_size={cfg['dn_labelbook_size']} must be >= num_classes - 1 = {cfg['num_classes'] - 1} "
                f"(class ids index the label embedding); set dn_labelbook_size={cfg['num_classes']}")
    return None


def _dn_scalar_replaces_dn_number(cfg):
    if cfg["dn_scalar"] is not None:
        cfg["dn_number"] = cfg["dn_scalar"]  # DN-DETR's name for the denoising query budget


# Keys of DINO's config files that this project does not implement: accepted only at DINO's value.
NOT_IMPLEMENTED = {
    "ddetr_lr_param": False, "frozen_weights": None, "unic_layers": 0,
    "query_dim": 4, "num_patterns": 0, "pdetr3_bbox_embed_diff_each_layer": False,
    "pdetr3_refHW": -1, "random_refpoints_xy": False, "fix_refpoints_hw": -1,
    "dabdetr_yolo_like_anchor_update": False, "dabdetr_deformable_encoder": False,
    "dabdetr_deformable_decoder": False, "use_deformable_box_attn": False, "box_attn_type": "roi_align",
    "dec_layer_number": None, "decoder_layer_noise": False, "dln_xy_noise": 0.2, "dln_hw_noise": 0.2,
    "add_channel_attention": False, "add_pos_value": False, "two_stage_pat_embed": 0,
    "two_stage_add_query_num": 0, "two_stage_learn_wh": False, "two_stage_default_hw": 0.05,
    "two_stage_keep_all_tokens": False, "masks": False, "mask_loss_coef": 1.0, "dice_loss_coef": 1.0,
    "enc_loss_coef": 1.0, "match_unstable_error": True, "decoder_sa_type": "sa",
    "decoder_module_seq": ["sa", "ca", "ffn"], "pre_norm": False,
    "two_stage_type": "standard", "matcher_type": "HungarianMatcher",
}

DINO_KEYS = KeyGroup("dino", "DINO (heads, two-stage query selection, contrastive denoising)", {
    "dec_pred_bbox_embed_share": bool_key("one box head for all decoder layers", model=True),
    "dec_pred_class_embed_share": bool_key("one class head for all decoder layers", model=True),
    "use_detached_boxes_dec_out": bool_key("box outputs from detached references (off = look forward twice)",
                                           model=True),
    "two_stage_bbox_embed_share": bool_key("encoder proposals share the decoder's box head", model=True),
    "two_stage_class_embed_share": bool_key("encoder proposals share the decoder's class head", model=True),
    "embed_init_tgt": bool_key("learned content queries (mixed query selection); off = from the encoder",
                               model=True),
    "interm_loss_coef": float_key("weight of the encoder-proposal losses", 0),
    "no_interm_box_loss": bool_key("drop the box losses of the encoder proposals"),
    "use_dn": bool_key("contrastive denoising queries in training"),
    "dn_number": int_key("denoising query budget (doubled into positive and negative groups)", 0),
    "dn_scalar": int_key("DN-DETR's name for dn_number; when set it replaces dn_number", 0, none_ok=True),
    "dn_box_noise_scale": float_key("denoising box noise scale (DINO's scripts: 1.0)", 0),
    "dn_label_noise_ratio": prob_key("fraction of denoising labels flipped"),
    "dn_labelbook_size": int_key("denoising label embeddings (>= num_classes - 1)", 1, model=True),
    "dn_label_coef": float_key("loss_ce_dn weight = cls_loss_coef x this", 0),
    "dn_bbox_coef": float_key("loss_bbox_dn / loss_giou_dn weights = coef x this", 0),
}, relations=(_labelbook_holds_classes,), derived=(_dn_scalar_replaces_dn_number,),
    not_implemented=NOT_IMPLEMENTED)


def _two_stage_refines(cfg):
    if cfg["two_stage"] and not cfg["with_box_refine"]:
        return ("two_stage=True needs with_box_refine=True (the official two-stage model refines boxes: its decoder "
                "holds the proposal heads); set with_box_refine=True, as deformable_detr_two_stage.py does")
    return None


DEFORMABLE_DETR_KEYS = KeyGroup("deformable_detr", "Deformable DETR (its variants)", {
    "with_box_refine": bool_key("iterative bounding box refinement: one head per decoder layer, each refining the "
                                "previous layer's (detached) boxes", model=True),
    "two_stage": bool_key("two-stage: queries from the top encoder proposals (class channel 0) instead of learned "
                          "query embeddings", model=True),
}, relations=(_two_stage_refines,))
