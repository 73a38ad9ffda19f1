"""DINO: DETR with improved denoising anchor boxes, with AugDETR's optional HAE and EMCA.

`DINO` holds the backbone, the input projections to the transformer width, the class / box heads (one
per decoder layer, shared by default) and the denoising label embedding; `build_dino` assembles it from
the config: the heads are built first and handed to the transformer's decoder and query selection.
"""
import copy
import math
import os
from typing import Dict, List, NamedTuple, Optional, TypedDict

import torch
from torch import Tensor, nn

from util.misc import to_nested_tensor

from ..common.backbones import build_backbone
from ..common.criterion import SetCriterion, SetKind, decoder_set_specs
from ..common.layers import MLP, inverse_sigmoid
from ..common.matcher import build_matcher
from ..common.postprocess import PostProcess
from ..registry import CONFIG_DIR, register_detector
from .aligndetr import ALIGNDETR_KEYS, build_aligndetr_criterion
from .augdetr.schema import AUGDETR_KEYS
from .deformable_transformer import DeformableTransformer
from .dn_components import dn_post_process, prepare_for_cdn
from .multiscale import input_projections, multiscale_features
from .query_selection import MixedQuerySelection
from .schema import DEFORMABLE_KEYS, DINO_KEYS
from .transformer_builder import build_deformable_transformer

__all__ = ["DINO", "DINOHeads", "DINOOutput", "build_dino", "build_dino_criterion", "dino_head_set", "dino_heads",
           "dino_loss_weights", "dino_options", "dino_set_specs"]


class DINOOutput(TypedDict, total=False):
    """What DINO.forward returns (B images, Q queries, K classes, L decoder layers).

    pred_logits (B, Q, K) and pred_boxes (B, Q, 4) sigmoid cxcywh: the last decoder layer;
    aux_outputs: L - 1 dicts of the same two tensors, the earlier layers (with aux_loss);
    interm_outputs: the same two tensors for the selected encoder proposals (two-stage);
    dn_meta: denoising bookkeeping (pad_size, num_dn_group, output_known_lbs_bboxes with the denoising
    queries' predictions) in training, None otherwise."""
    pred_logits: Tensor
    pred_boxes: Tensor
    aux_outputs: List[Dict[str, Tensor]]
    interm_outputs: Dict[str, Tensor]
    dn_meta: Optional[Dict]


class DINO(nn.Module):
    """The detector: forward(samples, targets) -> DINOOutput.

    class_embed / bbox_embed: the heads of the decoder layers (the same modules the decoder refines boxes
    with; DINO's checkpoints hold them under both names)."""

    def __init__(self, backbone: nn.Module, transformer: DeformableTransformer, input_proj: nn.ModuleList,
                 class_embed: nn.ModuleList, bbox_embed: nn.ModuleList, num_classes: int, num_queries: int,
                 aux_loss: bool = True, dn_number: int = 100, dn_box_noise_scale: float = 0.4,
                 dn_label_noise_ratio: float = 0.5, dn_labelbook_size: int = 100):
        super().__init__()
        self.backbone = backbone
        self.transformer = transformer
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.hidden_dim = transformer.d_model
        self.aux_loss = aux_loss
        self.dn_number = dn_number
        self.dn_box_noise_scale = dn_box_noise_scale
        self.dn_label_noise_ratio = dn_label_noise_ratio
        self.dn_labelbook_size = dn_labelbook_size
        self.label_enc = nn.Embedding(dn_labelbook_size + 1, self.hidden_dim)
        self.input_proj = input_proj
        self.bbox_embed = bbox_embed
        self.class_embed = class_embed

    def forward(self, samples, targets: Optional[List[Dict[str, Tensor]]] = None) -> DINOOutput:
        samples = to_nested_tensor(samples)
        srcs, masks, poss = multiscale_features(self.backbone, self.input_proj, samples)
        query_label, query_bbox, attn_mask, dn_meta = self.denoising_queries(targets)
        result = self.transformer(srcs, masks, poss, dn_anchors=query_bbox, dn_content=query_label,
                                  self_attn_mask=attn_mask)
        logits, coords = self.predict(self.label_enc_in_graph(result.hs), result.references, self.class_embed,
                                      self.bbox_embed)
        logits, coords = dn_post_process(logits, coords, dn_meta)
        return self.output_dict(logits, coords, result.queries.proposal_logits, result.queries.proposal_boxes,
                                dn_meta)

    def denoising_queries(self, targets: Optional[List[Dict[str, Tensor]]]):
        """(content (B, D, C), anchor logits (B, D, 4), self-attention mask (D + Q, D + Q), dn_meta) of the
        contrastive denoising queries of a training batch; all None otherwise."""
        if self.training and self.dn_number > 0 and targets is not None:
            return prepare_for_cdn(targets, self.dn_number, self.dn_label_noise_ratio, self.dn_box_noise_scale,
                                   self.num_queries, self.num_classes, self.hidden_dim, self.label_enc)
        return None, None, None, None

    def label_enc_in_graph(self, hs: List[Tensor]) -> List[Tensor]:
        """hs with label_enc in the graph even when no denoising runs (DDP needs every parameter used)."""
        hs[0] = hs[0] + self.label_enc.weight[0, 0] * 0.0
        return hs

    @staticmethod
    def predict(hs: List[Tensor], references: List[Tensor], class_heads: nn.ModuleList, box_heads: nn.ModuleList):
        """Per decoder layer outputs hs (B, N, C) and the decoder's L + 1 references (B, N, 4) -> (class logits
        (L, B, N, K), boxes (L, B, N, 4) sigmoid cxcywh): layer i's boxes refine layer i-1's undetached
        boxes ("look forward twice")."""
        coords = torch.stack([(box_head(h) + inverse_sigmoid(ref)).sigmoid()
                              for ref, box_head, h in zip(references[:-1], box_heads, hs)])
        logits = torch.stack([cls_head(h) for cls_head, h in zip(class_heads, hs)])
        return logits, coords

    def output_dict(self, logits: Tensor, coords: Tensor, proposal_logits: Tensor, proposal_boxes: Tensor,
                    dn_meta: Optional[Dict]) -> DINOOutput:
        """DINOOutput from the matching queries' predictions per layer (L, B, Q, ...) and the selected encoder
        proposals' (B, Q, ...)."""
        out: DINOOutput = {"pred_logits": logits[-1], "pred_boxes": coords[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], coords[:-1])]
        out["interm_outputs"] = {"pred_logits": proposal_logits, "pred_boxes": proposal_boxes}
        out["dn_meta"] = dn_meta
        return out


def dino_heads(hidden_dim: int, num_classes: int):
    """A class head (prior probability 0.01 in its bias) and a box head (a 3-layer MLP whose last layer
    starts at zero, so the first boxes are the references)."""
    class_head = nn.Linear(hidden_dim, num_classes)
    box_head = MLP(hidden_dim, hidden_dim, 4, 3)
    nn.init.constant_(class_head.bias, -math.log((1 - 0.01) / 0.01))
    nn.init.constant_(box_head.layers[-1].weight, 0)
    nn.init.constant_(box_head.layers[-1].bias, 0)
    return class_head, box_head


def per_layer(head: nn.Module, num_layers: int, share: bool) -> nn.ModuleList:
    """num_layers heads: the same module (share) or independent copies of it."""
    return nn.ModuleList([head if share else copy.deepcopy(head) for _ in range(num_layers)])


class DINOHeads(NamedTuple):
    """The prediction heads of a DINO-style detector: per decoder layer (class_embed, bbox_embed: one shared
    module or copies) and the encoder proposals' (encoder_class, encoder_box: the decoder's or copies)."""
    class_embed: nn.ModuleList
    bbox_embed: nn.ModuleList
    encoder_class: nn.Module
    encoder_box: nn.Module


def dino_head_set(args) -> DINOHeads:
    """DINO's heads as the config shares them (dec_pred_*_embed_share, two_stage_*_embed_share)."""
    class_head, box_head = dino_heads(args.hidden_dim, args.num_classes)
    return DINOHeads(per_layer(class_head, args.dec_layers, args.dec_pred_class_embed_share),
                     per_layer(box_head, args.dec_layers, args.dec_pred_bbox_embed_share),
                     class_head if args.two_stage_class_embed_share else copy.deepcopy(class_head),
                     box_head if args.two_stage_bbox_embed_share else copy.deepcopy(box_head))


def dino_options(args) -> Dict:
    """DINO's constructor keywords besides its parts, from the config."""
    return dict(num_classes=args.num_classes, num_queries=args.num_queries, aux_loss=args.aux_loss,
                dn_number=args.dn_number if args.use_dn else 0, dn_box_noise_scale=args.dn_box_noise_scale,
                dn_label_noise_ratio=args.dn_label_noise_ratio, dn_labelbook_size=args.dn_labelbook_size)


def dino_loss_weights(args) -> Dict[SetKind, Dict[str, float]]:
    """DINO's loss weights per set kind: the decoder layers', the denoising sets' (scaled by dn_label_coef /
    dn_bbox_coef) and the encoder proposals' (scaled by interm_loss_coef; no box terms with
    no_interm_box_loss)."""
    base = {"loss_ce": args.cls_loss_coef, "loss_bbox": args.bbox_loss_coef, "loss_giou": args.giou_loss_coef}
    dn = {"loss_ce": base["loss_ce"] * args.dn_label_coef, "loss_bbox": base["loss_bbox"] * args.dn_bbox_coef,
          "loss_giou": base["loss_giou"] * args.dn_bbox_coef}
    box_scale = 0.0 if args.no_interm_box_loss else 1.0
    interm = {k: v * args.interm_loss_coef * (1.0 if k == "loss_ce" else box_scale) for k, v in base.items()}
    return {SetKind.FINAL: base, SetKind.DECODER_LAYER: base, SetKind.DENOISING: dn, SetKind.ENCODER: interm}


def dino_set_specs(args):
    """The prediction sets DINO supervises: every decoder layer (the earlier ones with aux_loss), their
    denoising queries (with use_dn) and the encoder proposals."""
    return decoder_set_specs(args.dec_layers, args.aux_loss, encoder=True, denoising=args.use_dn)


def build_dino_criterion(args):
    """DINO's criterion, or AlignDETR's (criterion_type='aligndetr': only the loss and the matching differ)."""
    if args.criterion_type == "aligndetr":
        return build_aligndetr_criterion(args, dino_set_specs(args), dino_loss_weights(args))
    return SetCriterion(args.num_classes, build_matcher(args), dino_set_specs(args), dino_loss_weights(args),
                        focal_alpha=args.focal_alpha)


@register_detector("dino", key_groups=(DEFORMABLE_KEYS, DINO_KEYS, AUGDETR_KEYS, ALIGNDETR_KEYS),
                   defaults_file=os.path.join(CONFIG_DIR, "DINO", "DINO_4scale.py"),
                   summary="DINO; AugDETR's HAE / EMCA (use_hae, use_emca) and AlignDETR's loss (criterion_type) "
                           "as options", build_criterion=build_dino_criterion)
def build_dino(args):
    """Map the checked config onto DINO, its criterion and post-processor (the deformable-attention
    backend is the caller's choice, see models.select_msda_backend)."""
    backbone = build_backbone(args)
    heads = dino_head_set(args)
    selection = MixedQuerySelection(args.hidden_dim, args.num_queries, heads.encoder_class, heads.encoder_box,
                                    learned_content=args.embed_init_tgt)
    transformer = build_deformable_transformer(args, selection, heads.class_embed, heads.bbox_embed)
    model = DINO(backbone, transformer,
                 input_projections(backbone.num_channels, args.hidden_dim, args.num_feature_levels),
                 heads.class_embed, heads.bbox_embed, **dino_options(args))
    postprocessors = {"bbox": PostProcess(args.num_select, args.nms_iou_threshold)}
    return model, build_dino_criterion(args), postprocessors
