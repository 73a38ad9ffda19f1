"""The set-prediction losses shared by the detectors (SetCriterion), over typed prediction sets.

A detector's outputs hold several prediction sets; each has a kind (`SetKind`: the final decoder layer,
an earlier decoder layer, the encoder proposals selected as queries, every encoder token's class-agnostic
proposal, the denoising queries of a layer) and a decoder layer
index. `SetCriterion.set_specs()` lists the sets a model of its configuration produces, and the loss
weight table (`weight_dict`) is derived from them and the per-kind weights the detector's builder
gives. Matched sets are Hungarian-matched to the ground truth and get a sigmoid focal classification
loss, an L1 box loss and a GIoU loss; denoising sets are supervised by their known assignment. A variant
overrides `match` (how one set is matched, by its kind), `set_losses` (its losses) or `class_loss` (only
the classification term: `SoftmaxSetCriterion`, DETR's cross-entropy with a no-object class), never by
loss-key names. All losses are normalised by the number of ground-truth boxes across all processes. Loss keys
are DINO's and Deformable DETR's: a term plus its set's suffix ('', '_i', '_interm', '_enc', '_dn', '_dn_i').
"""
from dataclasses import dataclass
from enum import Enum
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou_loss, sigmoid_focal_loss

from util import dist as dist_utils

from .layers import at_least_fp32

LOSS_NAMES = ("loss_ce", "loss_bbox", "loss_giou")


class SetKind(str, Enum):
    FINAL = "final"  # the last decoder layer: the detector's predictions
    DECODER_LAYER = "decoder_layer"  # an earlier decoder layer (auxiliary loss)
    ENCODER = "encoder"  # the encoder proposals selected as queries (DINO's two-stage), with their classes
    PROPOSALS = "proposals"  # every encoder token's proposal, class-agnostic (Deformable DETR's two-stage)
    DENOISING = "denoising"  # the denoising queries of a decoder layer (known assignment)
    DENSE = "dense"  # dense auxiliary queries (DDQ-DETR): the encoder's (layer None) or a decoder layer's


@dataclass(frozen=True)
class SetSpec:
    """One prediction set: its kind and, for decoder sets, the 0-based decoder layer that made it."""
    kind: SetKind
    layer: Optional[int] = None
    num_layers: int = 0  # decoder layers of the model (to tell the final layer from the others)

    @property
    def suffix(self) -> str:
        """Its loss keys' suffix."""
        last = self.layer is None or self.layer == self.num_layers - 1
        if self.kind is SetKind.FINAL:
            return ""
        if self.kind is SetKind.DECODER_LAYER:
            return f"_{self.layer}"
        if self.kind is SetKind.ENCODER:
            return "_interm"
        if self.kind is SetKind.PROPOSALS:
            return "_enc"
        if self.kind is SetKind.DENSE:
            return "_dense_interm" if self.layer is None else f"_dense_{self.layer}"
        return "_dn" if last else f"_dn_{self.layer}"


class PredictionSet(NamedTuple):
    """A set's spec and its predictions: 'pred_logits' (B, N, K), 'pred_boxes' (B, N, 4) cxcywh and, optionally,
    'query_mask' (B, N) bool: the queries that count (matched and in the classification loss; DDQ-DETR's
    distinct queries of a decoder layer); without it every query counts."""
    spec: SetSpec
    preds: Dict[str, Tensor]


def decoder_set_specs(num_layers: int, aux_loss: bool, encoder: bool, denoising: bool,
                      proposals: bool = False) -> List[SetSpec]:
    """The sets of a DETR-style decoder, in the order of the weight table: per layer (the last first) its
    matched set and (with denoising) its denoising set, then the selected encoder proposals (encoder) and
    every token's class-agnostic proposal (proposals)."""
    layers = [num_layers - 1] + (list(range(num_layers - 1)) if aux_loss else [])
    specs = []
    for layer in layers:
        kind = SetKind.FINAL if layer == num_layers - 1 else SetKind.DECODER_LAYER
        specs.append(SetSpec(kind, layer, num_layers))
        if denoising:
            specs.append(SetSpec(SetKind.DENOISING, layer, num_layers))
    if encoder:
        specs.append(SetSpec(SetKind.ENCODER))
    if proposals:
        specs.append(SetSpec(SetKind.PROPOSALS))
    return specs


def weight_table(specs: Sequence[SetSpec], weights: Mapping[SetKind, Mapping[str, float]]) -> Dict[str, float]:
    """The loss weight of every (set, term): weights[kind][term] under the key term + set suffix."""
    return {term + spec.suffix: w for spec in specs for term, w in weights[spec.kind].items()}


class SetCriterion(nn.Module):
    """Computes the loss dict of the sets `specs`; `weight_dict` gives each entry's weight in the total.

    weights: per set kind, the weight of each loss term (a kind the detector does not weigh is not
    supervised)."""

    def __init__(self, num_classes: int, matcher: nn.Module, specs: Sequence[SetSpec],
                 weights: Mapping[SetKind, Mapping[str, float]], focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.specs = list(specs)
        self.weight_dict = weight_table(self.specs, weights)
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def set_specs(self) -> List[SetSpec]:
        return list(self.specs)

    def set_losses(self, outputs: Dict[str, Tensor], targets: List[Dict], indices: List[Tuple[Tensor, Tensor]],
                   num_boxes: float, log: bool = False) -> Dict[str, Tensor]:
        """Classification (class_loss), L1 and GIoU losses of one prediction set for given (query, target)
        indices."""
        logits = outputs["pred_logits"]  # (B, Q, K)
        batch_idx, src_idx, tgt_labels, src_boxes, tgt_boxes = self.matched_pairs(outputs, targets, indices)
        logits = at_least_fp32(logits)
        l1 = F.l1_loss(src_boxes, tgt_boxes, reduction="none")
        losses = {
            "loss_ce": self.class_loss(logits, (batch_idx, src_idx, tgt_labels), num_boxes, outputs.get("query_mask")),
            "loss_bbox": l1.sum() / num_boxes,
            "loss_giou": generalized_box_iou_loss(box_convert(src_boxes, "cxcywh", "xyxy"),
                                                  box_convert(tgt_boxes, "cxcywh", "xyxy"),
                                                  reduction="sum") / num_boxes,
        }
        if log:
            losses.update(self.log_terms(logits, batch_idx, src_idx, tgt_labels, l1, num_boxes))
        return losses

    def class_loss(self, logits: Tensor, matched: Tuple[Tensor, Tensor, Tensor], num_boxes: float,
                   query_mask: Optional[Tensor] = None) -> Tensor:
        """Sigmoid focal loss of logits (B, Q, K) against one-hot targets at the matched (image, query, label)
        triples, summed / num_boxes; with query_mask (B, Q) (a set whose queries a selection dropped, DDQ-DETR's
        decoder NMS) only the queries it weighs count."""
        onehot = torch.zeros_like(logits)
        onehot[matched] = 1.0
        if query_mask is None:
            return sigmoid_focal_loss(logits, onehot, alpha=self.focal_alpha, gamma=self.focal_gamma,
                                      reduction="sum") / num_boxes
        focal = sigmoid_focal_loss(logits, onehot, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="none")
        return (focal * query_mask[..., None]).sum() / num_boxes

    @staticmethod
    def matched_pairs(outputs: Dict[str, Tensor], targets: List[Dict], indices: List[Tuple[Tensor, Tensor]]
                      ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The P matched pairs of one set: image index (P,), query index (P,), target label (P,),
        predicted box (P, 4) float and target box (P, 4), cxcywh, all on the predictions' device."""
        logits = outputs["pred_logits"]
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)]).to(logits.device)
        src_idx = torch.cat([src for src, _ in indices]).to(logits.device)
        tgt_labels = torch.cat([t["labels"][j.to(t["labels"].device)] for t, (_, j) in zip(targets, indices)])
        src_boxes = at_least_fp32(outputs["pred_boxes"][batch_idx, src_idx])
        tgt_boxes = torch.cat([t["boxes"][j.to(t["boxes"].device)]
                               for t, (_, j) in zip(targets, indices)]).to(src_boxes)
        return batch_idx, src_idx, tgt_labels.to(logits.device), src_boxes, tgt_boxes

    @staticmethod
    def log_terms(logits: Tensor, batch_idx: Tensor, src_idx: Tensor, tgt_labels: Tensor, l1: Tensor,
                  num_boxes: float) -> Dict[str, Tensor]:
        """Logged, not trained on: loss_xy, loss_hw (the L1 parts, l1 (P, 4)) and class_error (%)."""
        terms = {"loss_xy": l1[:, :2].sum().detach() / num_boxes, "loss_hw": l1[:, 2:].sum().detach() / num_boxes}
        if len(src_idx):
            correct = logits[batch_idx, src_idx].argmax(-1) == tgt_labels
            terms["class_error"] = 100.0 - 100.0 * correct.float().mean().detach()
        else:
            terms["class_error"] = logits.new_tensor(0.0)
        return terms

    def match(self, pset: PredictionSet, targets: List[Dict]) -> List[Tuple[Tensor, Tensor]]:
        """(query, target) indices of one matched set: one-to-one (among the set's query_mask, if it has one)."""
        query_mask = pset.preds.get("query_mask")
        if query_mask is None:
            return self.matcher(pset.preds, targets)
        return match_within(self.matcher, pset.preds, targets, query_mask)

    def dn_set_losses(self, outputs: Dict[str, Tensor], targets: List[Dict], indices: List[Tuple[Tensor, Tensor]],
                      num_boxes: float) -> Dict[str, Tensor]:
        """Losses of one denoising set (its known assignment `indices`)."""
        return self.set_losses(outputs, targets, indices, num_boxes)

    @staticmethod
    def dn_indices(targets: List[Dict], dn_meta: Dict) -> List[Tuple[Tensor, Tensor]]:
        """Known assignment of positive denoising queries: in group g, slot g * 2 * max_gt + j
        denoises box j of its image."""
        groups = dn_meta["num_dn_group"]
        single_pad = dn_meta["pad_size"] // groups
        out = []
        for t in targets:
            n = len(t["labels"])
            tgt = torch.arange(n).repeat(groups)
            src = (torch.arange(groups)[:, None] * single_pad + torch.arange(n)[None]).flatten()
            out.append((src, tgt))
        return out

    def num_boxes(self, targets: List[Dict], device) -> float:
        n = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        n = dist_utils.all_reduce_sum(n) / dist_utils.get_world_size()
        return max(n.item(), 1.0)

    def matched_sets(self, outputs: Dict) -> List[PredictionSet]:
        """The model's matched prediction sets present in `outputs`: the final one, the earlier decoder
        layers in order, then the encoder proposals."""
        order = [s for s in self.specs if s.kind is SetKind.FINAL]
        order += sorted((s for s in self.specs if s.kind is SetKind.DECODER_LAYER), key=lambda s: s.layer)
        order += [s for s in self.specs if s.kind in (SetKind.ENCODER, SetKind.PROPOSALS)]
        sets = [PredictionSet(spec, self.predictions(outputs, spec)) for spec in order]
        return [s for s in sets if s.preds is not None]

    @staticmethod
    def predictions(outputs: Dict, spec: SetSpec) -> Optional[Dict[str, Tensor]]:
        """Where a matched set's predictions are in the output dict (None when absent)."""
        if spec.kind is SetKind.FINAL:
            return outputs
        if spec.kind is SetKind.DECODER_LAYER:
            aux = outputs.get("aux_outputs") or []
            return aux[spec.layer] if spec.layer < len(aux) else None
        if spec.kind is SetKind.PROPOSALS:
            return outputs.get("enc_outputs")
        return outputs.get("interm_outputs")

    @staticmethod
    def set_targets(spec: SetSpec, targets: List[Dict]) -> List[Dict]:
        """The targets a set is matched to and supervised with: class-agnostic ones (every label 0) for
        PROPOSALS, as Deformable DETR's two-stage encoder loss; the targets themselves otherwise."""
        if spec.kind is not SetKind.PROPOSALS:
            return targets
        return [dict(t, labels=torch.zeros_like(t["labels"])) for t in targets]

    def denoising_sets(self, outputs: Dict) -> List[PredictionSet]:
        """The denoising sets (the last layer first, as DINO logs them) of a training batch with denoising
        queries; [] otherwise."""
        dn_meta: Optional[Dict] = outputs.get("dn_meta")
        if not (self.training and dn_meta and "output_known_lbs_bboxes" in dn_meta):
            return []
        known = dn_meta["output_known_lbs_bboxes"]
        specs = {s.layer: s for s in self.specs if s.kind is SetKind.DENOISING}
        last = max(specs)
        return [PredictionSet(specs[last], known)] + [PredictionSet(specs[i], aux)
                                                      for i, aux in enumerate(known["aux_outputs"]) if i in specs]

    def forward(self, outputs: Dict, targets: List[Dict], return_indices: bool = False):
        """outputs: the detector's output dict; targets: per image 'labels' (K_i,), 'boxes' (K_i, 4) cxcywh."""
        device = outputs["pred_logits"].device
        num_boxes = self.num_boxes(targets, device)
        losses: Dict[str, Tensor] = {}
        final_indices = None
        for pset in self.matched_sets(outputs):
            set_targets = self.set_targets(pset.spec, targets)
            indices = self.match(pset, set_targets)
            final = pset.spec.kind is SetKind.FINAL
            if final:
                final_indices = indices
            set_losses = self.set_losses(pset.preds, set_targets, indices, num_boxes, log=final)
            losses.update({k + pset.spec.suffix: v for k, v in set_losses.items()})
        dn_sets = self.denoising_sets(outputs)
        if dn_sets:
            dn_meta = outputs["dn_meta"]
            dn_idx = self.dn_indices(targets, dn_meta)
            dn_boxes = num_boxes * dn_meta["num_dn_group"]
            for pset in dn_sets:
                set_losses = self.dn_set_losses(pset.preds, targets, dn_idx, dn_boxes)
                losses.update({k + pset.spec.suffix: v for k, v in set_losses.items()})
        else:
            # no denoising in this batch (evaluation): zeros, so logs keep their keys
            zero = outputs["pred_logits"].new_zeros(())
            for spec in sorted((s for s in self.specs if s.kind is SetKind.DENOISING), key=_dn_log_order):
                losses.update({k + spec.suffix: zero for k in LOSS_NAMES})
        return (losses, final_indices) if return_indices else losses


class SoftmaxSetCriterion(SetCriterion):
    """DETR's losses: softmax cross-entropy over num_classes classes plus a no-object class (the last logit,
    index num_classes), which every unmatched query is trained towards with weight eos_coef (the classes
    weigh 1). The cross-entropy is the weighted mean over all queries of the batch, not divided by the number
    of boxes; L1 and GIoU are SetCriterion's. Every set also logs cardinality_error: the L1 error of the
    number of queries predicting a real class against the number of boxes, per image."""

    def __init__(self, num_classes: int, matcher: nn.Module, specs: Sequence[SetSpec],
                 weights: Mapping[SetKind, Mapping[str, float]], eos_coef: float = 0.1):
        super().__init__(num_classes, matcher, specs, weights)
        class_weight = torch.ones(num_classes + 1)
        class_weight[-1] = eos_coef
        self.register_buffer("empty_weight", class_weight)

    def class_loss(self, logits: Tensor, matched: Tuple[Tensor, Tensor, Tensor], num_boxes: float,
                   query_mask: Optional[Tensor] = None) -> Tensor:
        if query_mask is not None:
            raise ValueError("SoftmaxSetCriterion has no query_mask (a selection that drops queries is DDQ-DETR's)")
        batch_idx, src_idx, labels = matched
        target = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        target[batch_idx, src_idx] = labels
        return F.cross_entropy(logits.transpose(1, 2), target, self.empty_weight.to(logits))

    def set_losses(self, outputs: Dict[str, Tensor], targets: List[Dict], indices: List[Tuple[Tensor, Tensor]],
                   num_boxes: float, log: bool = False) -> Dict[str, Tensor]:
        losses = super().set_losses(outputs, targets, indices, num_boxes, log)
        with torch.no_grad():
            predicted = (outputs["pred_logits"].argmax(-1) != self.num_classes).sum(1).float()  # (B,)
            boxes = torch.as_tensor([float(len(t["labels"])) for t in targets], device=predicted.device)
            losses["cardinality_error"] = F.l1_loss(predicted, boxes)
        return losses


def match_within(matcher: nn.Module, preds: Dict[str, Tensor], targets: List[Dict], query_mask: Tensor,
                 **kwargs) -> List[Tuple[Tensor, Tensor]]:
    """matcher(preds, targets, **kwargs) with each image's predictions restricted to its queries in query_mask
    (B, N) bool; the query indices returned are those of the full set."""
    indices = []
    for i, target in enumerate(targets):
        kept = torch.nonzero(query_mask[i]).squeeze(1)
        image = {k: preds[k][i:i + 1, kept] for k in ("pred_logits", "pred_boxes")}
        (src, tgt), = matcher(image, [target], **kwargs)
        indices.append((kept.cpu()[src], tgt))
    return indices


def _dn_log_order(spec: SetSpec) -> int:
    """The last layer's denoising set first, then the others by layer (DINO's loss-dict order)."""
    return -1 if spec.suffix == "_dn" else spec.layer
