"""DETR: the model, its criterion and its builder.

`DETR` holds the backbone (one level, e.g. ResNet layer4, or dilated for DC5), a 1x1 projection to the
transformer width, the learned queries and one class head (num_classes + the no-object class) and one box
MLP shared by all decoder layers. Its state_dict is the official one key for key (458 keys for R50), so the
released checkpoints load strictly. `build_detr` maps the checked config onto it and picks the shared parts
for softmax classes: SoftmaxHungarianMatcher, SoftmaxSetCriterion and SoftmaxPostProcess.
"""
import os
from typing import Dict, List, Optional, TypedDict

from torch import Tensor, nn

from util.misc import to_nested_tensor

from ..common.backbones import Joiner, build_backbone
from ..common.criterion import SetKind, SoftmaxSetCriterion, decoder_set_specs
from ..common.layers import MLP
from ..common.matcher import SoftmaxHungarianMatcher
from ..common.postprocess import SoftmaxPostProcess
from ..registry import CONFIG_DIR, register_detector
from .schema import DETR_KEYS, REFUSED
from .transformer import DETRDecoder, DETRDecoderLayer, DETREncoder, DETREncoderLayer, DETRTransformer

__all__ = ["DETR", "DETROutput", "build_detr", "build_detr_criterion"]


class DETROutput(TypedDict, total=False):
    """What DETR.forward returns (B images, Q queries, K classes + 1 no-object, L decoder layers):
    pred_logits (B, Q, K + 1) and pred_boxes (B, Q, 4) sigmoid cxcywh of the last layer; aux_outputs: the
    L - 1 earlier layers' (with aux_loss)."""
    pred_logits: Tensor
    pred_boxes: Tensor
    aux_outputs: List[Dict[str, Tensor]]


class DETR(nn.Module):
    """The detector: forward(samples, targets=None) -> DETROutput (targets are not read: DETR has no
    denoising queries). backbone: a Joiner whose last level feeds the transformer."""

    def __init__(self, backbone: Joiner, transformer: DETRTransformer, num_classes: int, num_queries: int,
                 aux_loss: bool = True):
        super().__init__()
        hidden_dim = transformer.d_model
        # registered in the official order, so the state_dict (and an optimizer's parameter list) is DETR's
        self.transformer = transformer
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.input_proj = nn.Conv2d(backbone.num_channels[-1], hidden_dim, kernel_size=1)
        self.backbone = backbone
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.aux_loss = aux_loss

    def forward(self, samples, targets: Optional[List[Dict[str, Tensor]]] = None) -> DETROutput:
        features, pos = self.backbone(to_nested_tensor(samples))
        src, mask = features[-1].decompose()
        hs = self.transformer(self.input_proj(src), mask, self.query_embed.weight, pos[-1])  # (L, B, Q, C)
        logits = self.class_embed(hs)
        boxes = self.bbox_embed(hs).sigmoid()
        out: DETROutput = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
        return out


def build_detr_transformer(args) -> DETRTransformer:
    """The transformer of the config's sizes (post-norm, or pre-norm with pre_norm)."""
    sizes = dict(d_model=args.hidden_dim, nhead=args.nheads, dim_feedforward=args.dim_feedforward,
                 dropout=args.dropout, activation=args.transformer_activation, normalize_before=args.pre_norm)
    encoder = DETREncoder([DETREncoderLayer(**sizes) for _ in range(args.enc_layers)],
                          nn.LayerNorm(args.hidden_dim) if args.pre_norm else None)
    decoder = DETRDecoder([DETRDecoderLayer(**sizes) for _ in range(args.dec_layers)], args.hidden_dim)
    return DETRTransformer(encoder, decoder, args.hidden_dim)


def build_detr_criterion(args) -> SoftmaxSetCriterion:
    """Cross-entropy with the no-object class (weight eos_coef), L1 and GIoU on every decoder layer (the
    earlier ones with aux_loss), matched with the softmax class cost."""
    matcher = SoftmaxHungarianMatcher(args.set_cost_class, args.set_cost_bbox, args.set_cost_giou)
    base = {"loss_ce": args.cls_loss_coef, "loss_bbox": args.bbox_loss_coef, "loss_giou": args.giou_loss_coef}
    specs = decoder_set_specs(args.dec_layers, args.aux_loss, encoder=False, denoising=False)
    return SoftmaxSetCriterion(args.num_classes, matcher, specs, {SetKind.FINAL: base, SetKind.DECODER_LAYER: base},
                               eos_coef=args.eos_coef)


@register_detector("detr", key_groups=(DETR_KEYS,), defaults_file=os.path.join(CONFIG_DIR, "DETR", "detr_r50.py"),
                   summary="DETR (R50 / R101, DC5): dense attention over one backbone level, softmax classes",
                   build_criterion=build_detr_criterion, refused=REFUSED)
def build_detr(args):
    """Map the checked config onto DETR, its criterion and post-processor."""
    model = DETR(build_backbone(args), build_detr_transformer(args), num_classes=args.num_classes,
                 num_queries=args.num_queries, aux_loss=args.aux_loss)
    postprocessors = {"bbox": SoftmaxPostProcess(args.num_select, args.nms_iou_threshold)}
    return model, build_detr_criterion(args), postprocessors
