"""AlignDETR's loss and matching on top of DINO (Cai et al., "Align-DETR: Improving DETR with
Simple IoU-aware BCE loss", as the official code trains it on DINO-4scale).

AlignDETR changes only what the model is trained with; the model and its state_dict stay DINO's:
  * mixed matching (`OneToManyMatcher`): the encoder proposals and the earlier decoder layers
    match each ground truth to k predictions (k from `o2m_k`), the last layer one-to-one;
  * IA-BCE classification (`ia_bce_loss`): a matched prediction's target is its quality
    t = p^alpha * IoU^(1 - alpha) instead of 1, without a focal factor; every other element is
    p^gamma * BCE(p, 0);
  * prime sample weights (`rank_weights`): the k matches of one ground truth ranked by t get
    w = exp(-rank / tau) on their classification target and on their L1 and GIoU losses.
The sets supervised (final, _0.._{L-2}, _interm, _dn*), the loss weights and the normalisation
by the number of ground-truth boxes are SetCriterion's: `AlignDETRCriterion` overrides only how
one set is matched and how one set's losses are computed.
"""
from typing import Dict, List, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_convert, box_iou, generalized_box_iou_loss

from util.config_schema import Key, KeyGroup, choice_key, float_key, prob_key

from ..common.criterion import PredictionSet, SetCriterion, SetKind, SetSpec
from ..common.layers import at_least_fp32
from ..common.matcher import HungarianMatcher

# positives of one image in a one-to-k set never exceed this fraction of the queries
MAX_POSITIVE_FRACTION = 0.5


def capped_k(k: int, num_gt: int, num_queries: int, fraction: float = MAX_POSITIVE_FRACTION) -> int:
    """k lowered so that k * num_gt <= fraction * num_queries, and at least 1."""
    if num_gt == 0:
        return k
    return max(1, min(k, int(fraction * num_queries) // num_gt))


class OneToManyMatcher(HungarianMatcher):
    """DINO's Hungarian matcher (same costs) that can give every ground truth k predictions.

    One-to-k is one assignment problem: the ground truth is repeated k times, so the cost matrix
    is DINO's (Q x n) tiled k times along the ground-truth axis (Q x k*n), and scipy's
    linear_sum_assignment gives each copy a different prediction. k = 1 is DINO's matching.
    max_positive_fraction: k is capped per image so that the positives stay within this fraction of the
    queries (AlignDETR's 0.5; DDQ-DETR's dense assignment caps at the queries themselves, 1.0).
    """

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 focal_alpha: float = 0.25, max_positive_fraction: float = MAX_POSITIVE_FRACTION):
        super().__init__(cost_class, cost_bbox, cost_giou, focal_alpha)
        self.max_positive_fraction = max_positive_fraction

    @torch.no_grad()
    def forward(self, outputs: Dict[str, Tensor], targets: List[Dict[str, Tensor]],
                k: int = 1) -> List[Tuple[Tensor, Tensor]]:
        """outputs: 'pred_logits' (B, Q, K), 'pred_boxes' (B, Q, 4); targets: 'labels' (n_i,), 'boxes' (n_i, 4).

        Returns per image (query indices, ground-truth indices in 0..n_i-1), each int64 of length
        k_i * n_i with k_i = capped_k(k, n_i, Q, max_positive_fraction) (per image); a query appears at most once.
        """
        if k == 1:
            return super().forward(outputs, targets)
        num_queries = outputs["pred_logits"].shape[1]
        ks = [capped_k(k, len(t["labels"]), num_queries, self.max_positive_fraction) for t in targets]
        tiled = [{"labels": t["labels"].repeat(ki), "boxes": t["boxes"].repeat(ki, 1)} for t, ki in zip(targets, ks)]
        indices = super().forward(outputs, tiled)
        # copy c of ground truth j is column c * n + j: fold the copies back onto j
        return [(src, tgt % max(len(t["labels"]), 1)) for (src, tgt), t in zip(indices, targets)]


def rank_weights(quality: Tensor, group: Tensor, tau: float) -> Tensor:
    """exp(-rank / tau) of each matched pair, rank = its place (0 = best) by `quality` among the
    pairs of the same `group` (one group per image and ground truth). quality, group: (P,) -> (P,).
    Ties keep the pairs' order."""
    if quality.numel() == 0:
        return quality.new_ones(0)
    by_quality = torch.argsort(quality, descending=True, stable=True)
    order = by_quality[torch.argsort(group[by_quality], stable=True)]  # by group, best first inside
    _, counts = torch.unique_consecutive(group[order], return_counts=True)
    starts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device) - starts
    return torch.exp(-rank.to(quality.dtype) / tau)


def ia_bce_loss(logits: Tensor, pos: Tuple[Tensor, Tensor, Tensor], target: Tensor, gamma: float) -> Tensor:
    """Summed IA-BCE over all elements of logits (B, Q, K); not normalised.

    pos: (batch, query, class) index tensors of the P positives, target (P,) their soft targets.
    Positives: BCE(p, target); every other element: p^gamma * BCE(p, 0) (the factor keeps its
    gradient, as in focal loss)."""
    logits = at_least_fp32(logits)
    prob = logits.sigmoid()
    soft = torch.zeros_like(logits)
    soft[pos] = target.to(soft.dtype)
    is_pos = torch.zeros_like(logits, dtype=torch.bool)
    is_pos[pos] = True
    weight = torch.where(is_pos, torch.ones_like(prob), prob ** gamma)
    return (F.binary_cross_entropy_with_logits(logits, soft, reduction="none") * weight).sum()


class AlignDETRCriterion(SetCriterion):
    """SetCriterion with AlignDETR's matching and losses (see the module docstring).

    o2m_k: k per prediction set, [encoder proposals, decoder layer 1, ..., decoder layer L];
    alpha: the quality exponent (not the focal alpha); gamma: the negatives' exponent;
    tau: the rank-weight temperature."""

    def __init__(self, num_classes: int, matcher: OneToManyMatcher, specs: Sequence[SetSpec],
                 weights: Mapping[SetKind, Mapping[str, float]], o2m_k: Sequence[int], alpha: float = 0.25,
                 gamma: float = 2.0, tau: float = 1.5, focal_alpha: float = 0.25):
        super().__init__(num_classes, matcher, specs, weights, focal_alpha=focal_alpha)
        self.o2m_k = list(o2m_k)
        self.alpha = alpha
        self.gamma = gamma
        self.tau = tau

    def k_of_set(self, spec: SetSpec) -> int:
        """k of a matched set: o2m_k[0] for the encoder proposals, o2m_k[i + 1] for the earlier decoder layer
        i (0-based), o2m_k[-1] for the last layer."""
        if spec.kind in (SetKind.ENCODER, SetKind.PROPOSALS):
            return self.o2m_k[0]
        if spec.kind is SetKind.FINAL:
            return self.o2m_k[-1]
        return self.o2m_k[spec.layer + 1]

    def match(self, pset: PredictionSet, targets: List[Dict]) -> List[Tuple[Tensor, Tensor]]:
        return self.matcher(pset.preds, targets, k=self.k_of_set(pset.spec))

    def dn_set_losses(self, outputs: Dict, targets: List[Dict], indices: List[Tuple[Tensor, Tensor]],
                      num_boxes: float) -> Dict[str, Tensor]:
        # denoising: fixed one-to-one assignment, so no ranking (the DN groups are not a bag of k)
        return self.set_losses(outputs, targets, indices, num_boxes, ranked=False)

    def set_losses(self, outputs: Dict[str, Tensor], targets: List[Dict], indices: List[Tuple[Tensor, Tensor]],
                   num_boxes: float, log: bool = False, ranked: bool = True) -> Dict[str, Tensor]:
        """IA-BCE, rank-weighted L1 and GIoU of one prediction set, each summed / num_boxes."""
        logits = outputs["pred_logits"]
        batch_idx, src_idx, tgt_labels, src_boxes, tgt_boxes = self.matched_pairs(outputs, targets, indices)
        src_xyxy, tgt_xyxy = box_convert(src_boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy")
        with torch.no_grad():
            iou = box_iou(src_xyxy, tgt_xyxy).diagonal() if len(src_idx) else src_boxes.new_zeros(0)
            prob = logits[batch_idx, src_idx, tgt_labels].float().sigmoid()
            quality = (prob ** self.alpha * iou ** (1 - self.alpha)).clamp(min=0.01)
            if ranked:
                tgt_idx = torch.cat([j for _, j in indices]).to(logits.device)
                weight = rank_weights(quality, batch_idx * (tgt_idx.max() + 1 if len(tgt_idx) else 1) + tgt_idx,
                                      self.tau)
            else:
                weight = torch.ones_like(quality)
        l1 = F.l1_loss(src_boxes, tgt_boxes, reduction="none")
        giou = generalized_box_iou_loss(src_xyxy, tgt_xyxy, reduction="none")
        losses = {
            "loss_ce": ia_bce_loss(logits, (batch_idx, src_idx, tgt_labels), weight * quality, self.gamma) / num_boxes,
            "loss_bbox": (l1.sum(-1) * weight).sum() / num_boxes,
            "loss_giou": (giou * weight).sum() / num_boxes,
        }
        if log:
            losses.update(self.log_terms(logits, batch_idx, src_idx, tgt_labels, l1, num_boxes))
        return losses


def build_aligndetr_criterion(args, specs: Sequence[SetSpec],
                              weights: Mapping[SetKind, Mapping[str, float]]) -> AlignDETRCriterion:
    """The criterion of criterion_type='aligndetr' over DINO's sets and loss weights (DINO's matching costs)."""
    matcher = OneToManyMatcher(args.set_cost_class, args.set_cost_bbox, args.set_cost_giou, args.focal_alpha)
    return AlignDETRCriterion(args.num_classes, matcher, specs, weights, args.o2m_k,
                              alpha=args.aligndetr_alpha, gamma=args.aligndetr_gamma, tau=args.aligndetr_tau,
                              focal_alpha=args.focal_alpha)


def _o2m_k_covers_layers(cfg):
    if cfg["criterion_type"] == "aligndetr" and len(cfg["o2m_k"]) != cfg["dec_layers"] + 1:
        return (f"o2m_k={cfg['o2m_k']} has {len(cfg['o2m_k'])} entries for dec_layers={cfg['dec_layers']}; give "
                f"dec_layers + 1 = {cfg['dec_layers'] + 1} (encoder proposals, then each decoder layer), "
                f"e.g. o2m_k={[2] * cfg['dec_layers'] + [1]}")
    return None


ALIGNDETR_KEYS = KeyGroup("aligndetr", "AlignDETR (loss and matching only; the model stays DINO's)", {
    "criterion_type": choice_key("training loss and matching: DINO's, or AlignDETR's (IA-BCE, one-to-k, rank "
                                 "weights)", "dino", "aligndetr"),
    "aligndetr_alpha": prob_key("AlignDETR quality t = p^alpha * IoU^(1-alpha) (not the focal alpha)"),
    "aligndetr_gamma": float_key("AlignDETR negatives' factor p^gamma", 0),
    "aligndetr_tau": float_key("AlignDETR rank weight exp(-rank / tau)", 0, low_open=True),
    "o2m_k": Key("list[int]", "AlignDETR matches per ground truth: [encoder proposals, decoder layer 1, ..., layer "
                 "L]", 1, length=(2, None)),
}, relations=(_o2m_k_covers_layers,))
