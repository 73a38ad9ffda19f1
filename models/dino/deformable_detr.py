"""Deformable DETR (Zhu et al., ICLR 2021) on the deformable transformer DINO uses, with AugDETR's HAE and EMCA
as options.

`DeformableDETR` holds what the official model holds, under the official names and in the official order, so
its state_dict is the released files' key for key (561 keys multi-scale, 549 single-scale, 597 with box
refinement, 630 two-stage; official.py names the files): the transformer, the class / box heads (one module
under six names without refinement; independent per layer with it; a seventh pair scoring the encoder's
proposals in two-stage, held by the decoder too as transformer.decoder.{class,bbox}_embed), `query_embed`
(Q, 2C: [:C] the static positional query, [C:] the content; not in two-stage), the input projections and the
backbone. What differs from DINO, as the official code computes it:
  * position encoding with the -0.5 offset and temperature 10000 (config keys pe_offset, pe_temperature*);
  * 2-d reference points sigmoid(transformer.reference_points(query position)), not detached
    (`StaticQuerySelection`); two-stage: the top-Q proposals by class channel 0, queries from the sine of
    the boxes in (cx, cy, w, h) order through pos_trans / pos_trans_norm (`ProposalQuerySelection`);
  * no final decoder norm, a static query position, refinement with detached references and no
    "look forward twice", inverse_sigmoid clamped at 1e-5;
  * focal loss weight 2; the two-stage encoder loss (`*_enc`) on every token's proposal with class-agnostic
    labels (SetKind.PROPOSALS); top-100 post-processing.
"""
import os
from typing import Dict, List, Optional, TypedDict

import torch
from torch import Tensor, nn

from util.misc import to_nested_tensor

from ..common.backbones import build_backbone
from ..common.criterion import SetCriterion, SetKind, decoder_set_specs
from ..common.layers import refine_boxes
from ..common.matcher import build_matcher
from ..common.postprocess import PostProcess
from ..registry import CONFIG_DIR, register_detector
from .augdetr.schema import AUGDETR_KEYS
from .deformable_transformer import DeformableTransformer
from .dino import dino_heads, per_layer
from .multiscale import input_projections, multiscale_features
from .query_selection import ProposalQuerySelection, StaticQuerySelection
from .schema import DEFORMABLE_DETR_KEYS, DEFORMABLE_KEYS
from .transformer_builder import build_deformable_transformer

__all__ = ["DeformableDETR", "DeformableDETROutput", "build_deformable_detr", "build_deformable_detr_criterion",
           "deformable_detr_heads"]

LOGIT_EPS = 1e-5  # the official inverse_sigmoid's clamp (DINO: 1e-3)


class DeformableDETROutput(TypedDict, total=False):
    """What DeformableDETR.forward returns (B images, Q queries, K classes, S encoder tokens).

    pred_logits (B, Q, K) and pred_boxes (B, Q, 4) sigmoid cxcywh: the last decoder layer; aux_outputs: the
    earlier layers' (with aux_loss); enc_outputs (two-stage): every encoder token's proposal, pred_logits
    (B, S, K) and pred_boxes (B, S, 4) (1.0 where the token is padded or its proposal invalid)."""
    pred_logits: Tensor
    pred_boxes: Tensor
    aux_outputs: List[Dict[str, Tensor]]
    enc_outputs: Dict[str, Tensor]


class DeformableDETR(nn.Module):
    """The detector: forward(samples, targets=None) -> DeformableDETROutput (targets are not read).

    class_embed / bbox_embed: dec_layers heads (+ 1 for the encoder proposals in two-stage); one shared
    module without box refinement. query_embed: None in two-stage."""

    def __init__(self, backbone: nn.Module, transformer: DeformableTransformer, input_proj: nn.ModuleList,
                 class_embed: nn.ModuleList, bbox_embed: nn.ModuleList, query_embed: Optional[nn.Embedding],
                 aux_loss: bool = True, logit_eps: float = LOGIT_EPS):
        super().__init__()
        # registration order = the official state_dict order (and named_parameters order, which the released
        # files' optimizer states follow)
        self.transformer = transformer
        self.class_embed = class_embed
        self.bbox_embed = bbox_embed
        self.query_embed = query_embed
        self.input_proj = input_proj
        self.backbone = backbone
        self.two_stage = query_embed is None
        self.num_queries = (transformer.query_selection.num_queries if self.two_stage
                            else query_embed.num_embeddings)
        self.hidden_dim = transformer.d_model
        self.aux_loss = aux_loss
        self.logit_eps = logit_eps

    def forward(self, samples, targets: Optional[List[Dict[str, Tensor]]] = None) -> DeformableDETROutput:
        samples = to_nested_tensor(samples)
        srcs, masks, poss = multiscale_features(self.backbone, self.input_proj, samples)
        query_embed = None if self.query_embed is None else self.query_embed.weight
        result = self.transformer(srcs, masks, poss, query_embed=query_embed)
        hs, references = result.hs, result.references
        if len(references) == 1:  # no refinement: every layer predicts relative to the first references
            references = references * (len(hs) + 1)
        # layer i's boxes: its head's delta on the logits of the references it sampled around (detached after
        # layer 0 with refinement), xy only for points
        coords = torch.stack([refine_boxes(box_head(h), ref, self.logit_eps)
                              for ref, box_head, h in zip(references[:-1], self.bbox_embed, hs)])
        logits = torch.stack([cls_head(h) for cls_head, h in zip(self.class_embed, hs)])
        out: DeformableDETROutput = {"pred_logits": logits[-1], "pred_boxes": coords[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], coords[:-1])]
        if result.queries.proposal_logits is not None:
            out["enc_outputs"] = {"pred_logits": result.queries.proposal_logits,
                                  "pred_boxes": result.queries.proposal_boxes}
        return out


def deformable_detr_heads(hidden_dim: int, num_classes: int, num_layers: int, with_box_refine: bool,
                          two_stage: bool):
    """(class_embed, bbox_embed) ModuleLists of num_layers (+ 1 in two-stage) heads, initialised as the
    official model: class bias at prior 0.01, last box layer 0 with bias[2:] = -2 (the shared head, or only
    the first of the refining heads), 0 everywhere in two-stage."""
    class_head, box_head = dino_heads(hidden_dim, num_classes)
    n = num_layers + (1 if two_stage else 0)
    class_embed = per_layer(class_head, n, share=not with_box_refine)
    bbox_embed = per_layer(box_head, n, share=not with_box_refine)
    with torch.no_grad():
        if not two_stage:
            bbox_embed[0].layers[-1].bias[2:] = -2.0
    return class_embed, bbox_embed


def deformable_detr_loss_weights(args) -> Dict[SetKind, Dict[str, float]]:
    """The same weights for every set: the decoder layers' and the encoder proposals'."""
    base = {"loss_ce": args.cls_loss_coef, "loss_bbox": args.bbox_loss_coef, "loss_giou": args.giou_loss_coef}
    return {SetKind.FINAL: base, SetKind.DECODER_LAYER: base, SetKind.PROPOSALS: base}


def build_deformable_detr_criterion(args) -> SetCriterion:
    """Every decoder layer (the earlier ones with aux_loss) and, in two-stage with aux_loss, every encoder
    token's proposal on class-agnostic labels (`*_enc`), as the official weight table has them."""
    specs = decoder_set_specs(args.dec_layers, args.aux_loss, encoder=False, denoising=False,
                              proposals=args.two_stage and args.aux_loss)
    return SetCriterion(args.num_classes, build_matcher(args), specs, deformable_detr_loss_weights(args),
                        focal_alpha=args.focal_alpha)


@register_detector("deformable_detr", key_groups=(DEFORMABLE_KEYS, DEFORMABLE_DETR_KEYS, AUGDETR_KEYS),
                   defaults_file=os.path.join(CONFIG_DIR, "DeformableDETR", "deformable_detr.py"),
                   summary="Deformable DETR (multi-scale, single-scale, + box refinement, ++ two-stage); AugDETR's "
                           "HAE / EMCA (use_hae, use_emca) as options",
                   build_criterion=build_deformable_detr_criterion,
                   refused={"aligndetr": "AlignDETR's loss is built on DINO's sets here; use modelname='dino'"})
def build_deformable_detr(args):
    """Map the checked config onto DeformableDETR, its criterion and post-processor."""
    backbone = build_backbone(args)
    d = args.hidden_dim
    class_embed, bbox_embed = deformable_detr_heads(d, args.num_classes, args.dec_layers, args.with_box_refine,
                                                    args.two_stage)
    if args.two_stage:
        selection = ProposalQuerySelection(d, args.num_queries, class_embed[-1], bbox_embed[-1])
        query_embed = None
    else:
        selection = StaticQuerySelection(d)
        query_embed = nn.Embedding(args.num_queries, 2 * d)
    transformer = build_deformable_transformer(
        args, selection, class_embed=class_embed if args.two_stage else None,
        bbox_embed=bbox_embed if args.with_box_refine else None, final_norm=False, look_forward_twice=False,
        position_from_boxes=False, query_dim=4 if args.two_stage else 2, logit_eps=LOGIT_EPS)
    model = DeformableDETR(backbone, transformer,
                           input_projections(backbone.num_channels, d, args.num_feature_levels),
                           class_embed, bbox_embed, query_embed, aux_loss=args.aux_loss)
    postprocessors = {"bbox": PostProcess(args.num_select, args.nms_iou_threshold)}
    return model, build_deformable_detr_criterion(args), postprocessors
