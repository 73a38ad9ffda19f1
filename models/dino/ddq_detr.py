"""DDQ-DETR: DINO with dense distinct queries (Zhang et al., "Dense Distinct Query for End-to-End Object
Detection", CVPR 2023), as its official code (jshilong/DDQ, branch ddq_detr) and mmdetection's port train it.

What differs from DINO (everything else is DINO's, and `--use_hae --use_emca` add AugDETR as on DINO):
  * the query selection (`DistinctQuerySelection`): class-agnostic NMS (ddq_enc_nms_iou) over every encoder
    proposal, the first num_queries survivors; content queries `query_map` of the encoder memory instead of
    DINO's learned `tgt_embed`;
  * dense queries in training: int(ddq_dense_ratio * num_queries) more, from a second encoder head without
    NMS, through the same decoder layers but seeing only each other, with their own class and box heads per
    decoder layer (dense_class_embed, dense_bbox_embed);
  * between decoder layers (`DistinctQueryMasks`): NMS (ddq_dec_nms_iou) over the distinct queries' boxes
    rewrites their self-attention mask and names the queries the next layer's loss and the inference use
    (ddq_distinct_set: the official code's 'released' behaviour or the 'tracked' keep-set);
  * the losses (`DDQCriterion`): DINO's on the distinct queries, plus the dense auxiliary loss.
Inference runs only the distinct queries, and no NMS follows the model (nms_iou_threshold stays -1).

state_dict against DINO's: no transformer.tgt_embed; new transformer.query_map, transformer.enc_out_dense_*
(the second encoder head) and the dense heads per decoder layer (dense_class_embed.*, dense_bbox_embed.*, the
box heads also as transformer.decoder.dense_bbox_embed.*). A DINO checkpoint loaded with
--pretrain_model_path reports those as missing and tgt_embed as unused; the rest fits.
"""
import dataclasses
import functools
import os
from typing import Dict, List, Optional

from torch import Tensor, nn

from util.config_schema import KeyGroup, choice_key, float_key, int_key
from util.misc import to_nested_tensor

from ..common.backbones import build_backbone
from ..common.criterion import SetKind
from ..common.matcher import build_matcher
from ..common.postprocess import PostProcess
from ..registry import CONFIG_DIR, register_detector
from .aligndetr import OneToManyMatcher
from .augdetr.schema import AUGDETR_KEYS
from .ddq_loss import DDQCriterion, ddq_set_specs
from .deformable_transformer import DeformableTransformer
from .dino import DINO, DINOOutput, dino_head_set, dino_heads, dino_loss_weights, dino_options, per_layer
from .distinct_queries import DenseQueryDecoder, DistinctQueryMasks, DistinctQuerySelection, QueryLayout
from .dn_components import dn_post_process
from .multiscale import input_projections, multiscale_features
from .schema import DEFORMABLE_KEYS, DINO_KEYS
from .transformer_builder import build_deformable_transformer

__all__ = ["DDQDETR", "DDQ_KEYS", "build_ddq_criterion", "build_ddq_detr"]


class DDQOutput(DINOOutput, total=False):
    """DINOOutput over the distinct queries, plus: 'query_mask' (B, Q) bool in the final dict and in aux_outputs
    after the first layer: the queries that layer's loss (and, for the last, the inference) uses;
    dense_outputs: per decoder layer the dense queries' 'pred_logits' (B, E, K) and 'pred_boxes' (B, E, 4);
    dense_interm_outputs: the same for the selected dense encoder proposals. The dense entries are present
    in training only."""
    query_mask: Tensor
    dense_outputs: List[Dict[str, Tensor]]
    dense_interm_outputs: Dict[str, Tensor]


class DDQDETR(DINO):
    """DINO with DDQ-DETR's distinct and dense queries: forward(samples, targets) -> DDQOutput.

    The transformer's query selection is a DistinctQuerySelection and its decoder a DenseQueryDecoder;
    dense_class_embed / dense_bbox_embed: the dense queries' heads, one per decoder layer (None without
    dense queries); num_dense: dense queries per image in training; num_heads: the decoder's attention heads
    (the per-image masks repeat per head); decoder_nms_iou and tracked_distinct: the distinct query selection
    between decoder layers (DistinctQueryMasks)."""

    def __init__(self, backbone: nn.Module, transformer: DeformableTransformer, input_proj: nn.ModuleList,
                 class_embed: nn.ModuleList, bbox_embed: nn.ModuleList, dense_class_embed: Optional[nn.ModuleList],
                 dense_bbox_embed: Optional[nn.ModuleList], num_dense: int, num_heads: int, decoder_nms_iou: float,
                 tracked_distinct: bool = False, **dino_kwargs):
        super().__init__(backbone, transformer, input_proj, class_embed, bbox_embed, **dino_kwargs)
        self.num_heads = num_heads
        self.dense_class_embed = dense_class_embed
        self.dense_bbox_embed = dense_bbox_embed
        self.num_dense = num_dense
        self.decoder_nms_iou = decoder_nms_iou
        self.tracked_distinct = tracked_distinct

    def forward(self, samples, targets: Optional[List[Dict[str, Tensor]]] = None) -> DDQOutput:
        samples = to_nested_tensor(samples)
        srcs, masks, poss = multiscale_features(self.backbone, self.input_proj, samples)
        query_label, query_bbox, dn_mask, dn_meta = self.denoising_queries(targets)
        layout = QueryLayout(dn_meta["pad_size"] if dn_meta else 0, self.num_queries,
                             self.num_dense if self.training else 0)
        initial_mask = layout.self_attention_mask(dn_mask, srcs[0].device)
        distinct = DistinctQueryMasks(layout, initial_mask, self.class_embed, self.num_heads, self.decoder_nms_iou,
                                      self.tracked_distinct)
        result = self.transformer(srcs, masks, poss, dn_anchors=query_bbox, dn_content=query_label,
                                  self_attn_mask=initial_mask, mask_update=distinct)
        hs, refs = self.label_enc_in_graph(result.hs), result.references
        matching = slice(0, layout.dense.start)  # denoising and distinct queries
        logits, coords = self.predict([h[:, matching] for h in hs], [r[:, matching] for r in refs],
                                      self.class_embed, self.bbox_embed)
        logits, coords = dn_post_process(logits, coords, dn_meta)
        queries = result.queries
        out: DDQOutput = self.output_dict(logits, coords, queries.proposal_logits[:, :self.num_queries],
                                          queries.proposal_boxes[:, :self.num_queries], dn_meta)
        self.mark_distinct(out, distinct.distinct)
        if layout.num_dense:
            dense = layout.dense
            dense_logits, dense_coords = self.predict([h[:, dense] for h in hs], [r[:, dense] for r in refs],
                                                      self.dense_class_embed, self.dense_bbox_embed)
            out["dense_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(dense_logits, dense_coords)]
            out["dense_interm_outputs"] = {"pred_logits": queries.proposal_logits[:, self.num_queries:],
                                           "pred_boxes": queries.proposal_boxes[:, self.num_queries:]}
        return out

    @staticmethod
    def mark_distinct(out: DDQOutput, distinct: List[Tensor]) -> None:
        """Give the sets of decoder layers 1 .. L-1 their query_mask: distinct[l] (B, Q) is layer l + 1's."""
        if not distinct:
            return
        out["query_mask"] = distinct[-1]
        for layer, aux in enumerate(out.get("aux_outputs", [])[1:], start=1):
            aux["query_mask"] = distinct[layer - 1]


def _ddq_dense_ratio_fits(cfg):
    if cfg["ddq_dense_ratio"] and int(cfg["ddq_dense_ratio"] * cfg["num_queries"]) == 0:
        return (f"ddq_dense_ratio={cfg['ddq_dense_ratio']} gives no dense query for num_queries={cfg['num_queries']}; "
                f"raise it, or set 0 for none")
    return None


# DINO's keys, but for its learned content queries (DDQ-DETR's come from query_map)
DDQ_DINO_KEYS = dataclasses.replace(
    DINO_KEYS, name="dino_ddq", title="DINO (heads, two-stage proposals, contrastive denoising) in DDQ-DETR",
    keys={k: v for k, v in DINO_KEYS.keys.items() if k != "embed_init_tgt"})

DDQ_KEYS = KeyGroup("ddq", "DDQ-DETR (distinct and dense queries)", {
    "ddq_enc_nms_iou": float_key("IoU of the class-agnostic NMS over the encoder proposals (distinct queries)", 0,
                                 1.0, low_open=True, model=True),
    "ddq_dec_nms_iou": float_key("IoU of the NMS over the distinct queries' boxes after each decoder layer but the "
                                 "last", 0, 1.0, low_open=True, model=True),
    "ddq_distinct_set": choice_key("queries a layer's loss and the inference use after the decoder NMS: 'released' "
                                   "(the official code: all unless query 0 was suppressed, jshilong/DDQ#14) or "
                                   "'tracked' (the kept ones)", "released", "tracked", model=True),
    "ddq_dense_ratio": float_key("dense queries in training = int(ratio x num_queries); 0: none", 0, model=True),
    "ddq_dense_k": int_key("dense auxiliary loss: queries per ground truth (k = min(this, dense // boxes))", 1),
    "ddq_dense_alpha": float_key("dense auxiliary loss: alignment metric s^alpha * IoU^beta, alpha", 0),
    "ddq_dense_beta": float_key("dense auxiliary loss: alignment metric s^alpha * IoU^beta, beta", 0),
    "ddq_qfl_beta": float_key("dense auxiliary loss: Quality Focal Loss exponent", 0),
    "ddq_dense_cls_loss_coef": float_key("weight of the dense auxiliary Quality Focal Loss", 0),
    "ddq_dense_giou_loss_coef": float_key("weight of the dense auxiliary GIoU loss", 0),
}, relations=(_ddq_dense_ratio_fits,),
    # DINO's config files (the base of DDQ's) set these; DDQ-DETR trains neither learned content queries nor
    # AlignDETR's loss, so only DINO's defaults are accepted
    not_implemented={"embed_init_tgt": False, "criterion_type": "dino", "aligndetr_alpha": 0.25,
                     "aligndetr_gamma": 2.0, "aligndetr_tau": 1.5, "o2m_k": [2, 2, 2, 2, 2, 2, 1]})


def num_dense_queries(args) -> int:
    return int(args.ddq_dense_ratio * args.num_queries)


def build_ddq_criterion(args) -> DDQCriterion:
    """DINO's losses (weights, matching costs) on the distinct queries, the dense auxiliary loss on the dense
    ones (weights ddq_dense_*_loss_coef)."""
    dense = num_dense_queries(args) > 0
    specs = ddq_set_specs(args.dec_layers, args.aux_loss, denoising=args.use_dn, dense=dense)
    weights = dict(dino_loss_weights(args),
                   **{SetKind.DENSE: {"loss_ce": args.ddq_dense_cls_loss_coef,
                                      "loss_giou": args.ddq_dense_giou_loss_coef}})
    dense_matcher = OneToManyMatcher(args.set_cost_class, args.set_cost_bbox, args.set_cost_giou, args.focal_alpha,
                                     max_positive_fraction=1.0)
    return DDQCriterion(args.num_classes, build_matcher(args), specs, weights, dense_matcher,
                        dense_k=args.ddq_dense_k, alpha=args.ddq_dense_alpha, beta=args.ddq_dense_beta,
                        qfl_beta=args.ddq_qfl_beta, focal_alpha=args.focal_alpha)


@register_detector("ddq_detr", key_groups=(DEFORMABLE_KEYS, DDQ_DINO_KEYS, AUGDETR_KEYS, DDQ_KEYS),
                   defaults_file=os.path.join(CONFIG_DIR, "DDQ", "DDQ_4scale.py"),
                   summary="DDQ-DETR (DINO with dense distinct queries); AugDETR's HAE / EMCA (use_hae, use_emca) "
                           "as options", build_criterion=build_ddq_criterion)
def build_ddq_detr(args):
    """Map the checked config onto DDQDETR, its criterion and post-processor."""
    backbone = build_backbone(args)
    heads = dino_head_set(args)
    num_dense = num_dense_queries(args)
    dense_class = dense_box = dense_class_embed = dense_bbox_embed = None
    if num_dense:  # the encoder's dense head and one per decoder layer, each its own copy
        dense_class, dense_box = dino_heads(args.hidden_dim, args.num_classes)
        dense_class_embed = per_layer(dense_class, args.dec_layers, share=False)
        dense_bbox_embed = per_layer(dense_box, args.dec_layers, share=False)
    selection = DistinctQuerySelection(args.hidden_dim, args.num_queries, heads.encoder_class, heads.encoder_box,
                                       args.ddq_enc_nms_iou, dense_class, dense_box, num_dense)
    decoder = functools.partial(DenseQueryDecoder, dense_box_heads=dense_bbox_embed, num_dense=num_dense)
    transformer = build_deformable_transformer(args, selection, heads.class_embed, heads.bbox_embed,
                                               decoder_type=decoder)
    model = DDQDETR(backbone, transformer,
                    input_projections(backbone.num_channels, args.hidden_dim, args.num_feature_levels),
                    heads.class_embed, heads.bbox_embed, dense_class_embed, dense_bbox_embed, num_dense, args.nheads,
                    args.ddq_dec_nms_iou, tracked_distinct=args.ddq_distinct_set == "tracked", **dino_options(args))
    postprocessors = {"bbox": PostProcess(args.num_select, args.nms_iou_threshold)}
    return model, build_ddq_criterion(args), postprocessors
