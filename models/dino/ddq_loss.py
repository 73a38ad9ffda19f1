"""DDQ-DETR's losses: DINO's on the distinct queries, plus the dense auxiliary loss on the dense queries.

The distinct queries (encoder proposals, every decoder layer, denoising) keep DINO's one-to-one loss;
a decoder layer after the first counts only the queries its predecessor left distinct (the set's
'query_mask', see SetCriterion). The dense queries' predictions, the encoder's dense proposals
(SetKind.DENSE, loss suffix _dense_interm) and each decoder layer's dense outputs (_dense_{layer}), get
the dense auxiliary loss (the official code's AuxLossModule, mmdetection's DDQAuxLoss), per set:
  * top-k assignment: DINO's matching cost with every ground truth repeated k = min(dense_k, floor(E / n))
    times (E dense queries, n ground truths of the image), one Hungarian assignment: each ground truth
    gets up to dense_k distinct queries;
  * alignment metric of a matched pair m = s^alpha * IoU^beta (s: the query's probability of the ground
    truth's class, IoU: plain IoU of the boxes), detached;
  * soft target t = m / (max m + 1e-7) * max IoU, maxima over the pairs of the same ground truth (TOOD's
    normalisation);
  * Quality Focal Loss (beta qfl_beta) on every element: a matched query's class of its ground truth
    BCE(p, t) * |t - p|^beta, every other element BCE(p, 0) * p^beta; a GIoU loss of the matched boxes
    weighted by t; no L1 term;
  * both divided by the sum of t over the batch (averaged over processes), at least 1.
"""
from typing import Dict, List, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_convert, box_iou, generalized_box_iou_loss

from util import dist as dist_utils

from ..common.criterion import PredictionSet, SetCriterion, SetKind, SetSpec, decoder_set_specs
from ..common.layers import at_least_fp32
from ..common.matcher import HungarianMatcher
from .aligndetr import OneToManyMatcher

ALIGNMENT_EPS = 1e-7  # the official code's 10e-8 in the soft targets' normalisation
DENSE_LOSS_NAMES = ("loss_ce", "loss_giou")


def alignment_targets(prob: Tensor, iou: Tensor, group: Tensor, alpha: float, beta: float) -> Tensor:
    """Soft targets of P matched pairs: prob, iou, group (P,) (one group per image and ground truth) ->
    t = m / (max m + 1e-7) * max iou with m = prob^alpha * iou^beta, maxima within the pair's group."""
    metric = prob ** alpha * iou ** beta
    groups = int(group.max()) + 1 if len(group) else 0
    best_metric = metric.new_zeros(groups).scatter_reduce(0, group, metric, "amax", include_self=False)
    best_iou = iou.new_zeros(groups).scatter_reduce(0, group, iou, "amax", include_self=False)
    return metric / (best_metric[group] + ALIGNMENT_EPS) * best_iou[group]


def quality_focal_loss(logits: Tensor, pos: Tuple[Tensor, Tensor, Tensor], target: Tensor, beta: float) -> Tensor:
    """Summed Quality Focal Loss over all elements of logits (B, N, K); pos: (batch, query, class) indices of
    the P positives, target (P,) their soft targets. Positives: BCE(p, t) * |t - p|^beta; every other
    element BCE(p, 0) * p^beta (the factors keep their gradient, as the official code's)."""
    logits = at_least_fp32(logits)
    prob = logits.sigmoid()
    soft = torch.zeros_like(logits)
    soft[pos] = target.to(soft.dtype)
    factor = prob ** beta
    factor[pos] = (soft[pos] - prob[pos]).abs() ** beta
    return (F.binary_cross_entropy_with_logits(logits, soft, reduction="none") * factor).sum()


class DDQCriterion(SetCriterion):
    """SetCriterion over DINO's sets plus DDQ-DETR's dense sets (SetKind.DENSE; see the module docstring).

    dense_matcher: the one-to-k matcher of the dense assignment (DINO's costs, k capped at E // n);
    dense_k: the most queries per ground truth; alpha, beta: the alignment metric's exponents; qfl_beta:
    the Quality Focal Loss's."""

    def __init__(self, num_classes: int, matcher: HungarianMatcher, specs: Sequence[SetSpec],
                 weights: Mapping[SetKind, Mapping[str, float]], dense_matcher: OneToManyMatcher, dense_k: int = 4,
                 alpha: float = 1.0, beta: float = 6.0, qfl_beta: float = 2.0, focal_alpha: float = 0.25):
        super().__init__(num_classes, matcher, specs, weights, focal_alpha=focal_alpha)
        self.dense_matcher = dense_matcher
        self.dense_k = dense_k
        self.alpha = alpha
        self.beta = beta
        self.qfl_beta = qfl_beta

    def dense_sets(self, outputs: Dict) -> List[PredictionSet]:
        """The dense sets present in `outputs` (a training forward): the encoder's, then each decoder layer's."""
        found = []
        for spec in self.specs:
            if spec.kind is not SetKind.DENSE:
                continue
            if spec.layer is None:
                preds = outputs.get("dense_interm_outputs")
            else:
                layers = outputs.get("dense_outputs") or []
                preds = layers[spec.layer] if spec.layer < len(layers) else None
            if preds is not None:
                found.append(PredictionSet(spec, preds))
        return found

    def dense_losses(self, preds: Dict[str, Tensor], targets: List[Dict]) -> Dict[str, Tensor]:
        """loss_ce (Quality Focal Loss) and loss_giou of one dense set, each divided by the sum of targets."""
        logits = preds["pred_logits"]
        indices = self.dense_matcher(preds, targets, k=self.dense_k)
        batch_idx, src_idx, tgt_labels, src_boxes, tgt_boxes = self.matched_pairs(preds, targets, indices)
        src_xyxy, tgt_xyxy = box_convert(src_boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy")
        with torch.no_grad():
            iou = box_iou(src_xyxy, tgt_xyxy).diagonal()
            prob = at_least_fp32(logits[batch_idx, src_idx, tgt_labels]).sigmoid()
            gt_idx = torch.cat([j for _, j in indices]).to(logits.device)
            max_gt = max((len(t["labels"]) for t in targets), default=0)
            target = alignment_targets(prob, iou, batch_idx * max(max_gt, 1) + gt_idx, self.alpha, self.beta)
            total = dist_utils.all_reduce_sum(target.sum().reshape(1)) / dist_utils.get_world_size()
            normaliser = max(total.item(), 1.0)
        giou = generalized_box_iou_loss(src_xyxy, tgt_xyxy, reduction="none")
        return {"loss_ce": quality_focal_loss(logits, (batch_idx, src_idx, tgt_labels), target,
                                              self.qfl_beta) / normaliser,
                "loss_giou": (giou * target).sum() / normaliser}

    def forward(self, outputs: Dict, targets: List[Dict], return_indices: bool = False):
        result = super().forward(outputs, targets, return_indices)
        losses = result[0] if return_indices else result
        found = self.dense_sets(outputs)
        for pset in found:
            losses.update({k + pset.spec.suffix: v for k, v in self.dense_losses(pset.preds, targets).items()})
        if not found:  # evaluation: zeros, so logs keep their keys
            zero = outputs["pred_logits"].new_zeros(())
            for spec in (s for s in self.specs if s.kind is SetKind.DENSE):
                losses.update({k + spec.suffix: zero for k in DENSE_LOSS_NAMES})
        return result


def ddq_set_specs(num_layers: int, aux_loss: bool, denoising: bool, dense: bool) -> List[SetSpec]:
    """DINO's sets (decoder_set_specs) and, with dense queries, the dense sets: the encoder's, then each
    decoder layer's."""
    specs = decoder_set_specs(num_layers, aux_loss, encoder=True, denoising=denoising)
    if dense:
        specs += [SetSpec(SetKind.DENSE, None, num_layers)]
        specs += [SetSpec(SetKind.DENSE, layer, num_layers) for layer in range(num_layers)]
    return specs
