"""Post-processing: a detector's raw outputs -> per-image scores, labels and boxes in pixels.

Each detector picks its post-processor in its builder: `PostProcess` (sigmoid classes, top-k over
queries x classes: DINO, Deformable DETR, ...) or `SoftmaxPostProcess` (one softmax over the classes and
a no-object class, one detection per query: DETR).
"""
from typing import Dict, List

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_convert


def pixel_boxes(boxes: Tensor, target_sizes: Tensor) -> Tensor:
    """Normalised cxcywh boxes (B, N, 4) -> xyxy in pixels of target_sizes (B, 2) as (h, w)."""
    h, w = target_sizes.float().unbind(1)
    return box_convert(boxes.float(), "cxcywh", "xyxy") * torch.stack([w, h, w, h], 1)[:, None]


def detections(scores: Tensor, labels: Tensor, boxes: Tensor, nms_iou_threshold: float) -> List[Dict[str, Tensor]]:
    """Per image of scores, labels (B, k) and boxes (B, k, 4) its result dict; nms_iou_threshold > 0 first
    removes boxes by per-class NMS."""
    results = []
    for s, lab, b in zip(scores, labels, boxes):
        if nms_iou_threshold > 0:
            keep = batched_nms(b, s, lab, nms_iou_threshold)
            s, lab, b = s[keep], lab[keep], b[keep]
        results.append({"scores": s, "labels": lab, "boxes": b})
    return results


class PostProcess(nn.Module):
    """Top-k (query, class) pairs over all Q x K sigmoid scores, boxes scaled to image size.

    A query may appear with several classes, as in DINO. nms_iou_threshold > 0 adds per-class NMS.
    """

    def __init__(self, num_select: int = 300, nms_iou_threshold: float = -1):
        super().__init__()
        self.num_select = num_select
        self.nms_iou_threshold = nms_iou_threshold

    @torch.no_grad()
    def forward(self, outputs: Dict, target_sizes: Tensor) -> List[Dict[str, Tensor]]:
        """target_sizes (B, 2) as (h, w) -> per image 'scores' (k,), 'labels' (k,), 'boxes' (k, 4) xyxy pixels.
        outputs' optional 'query_mask' (B, Q) bool names the queries to report (DDQ-DETR's distinct ones): the
        others are never reported (an image may then get fewer than num_select)."""
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        query_mask = outputs.get("query_mask")
        prob = logits.float().sigmoid()
        if query_mask is not None:
            prob = prob.masked_fill(~query_mask[..., None], -1.0)  # below every probability
        prob = prob.flatten(1)  # (B, Q*K)
        k = min(self.num_select, prob.shape[1])
        scores, idx = torch.topk(prob, k, dim=1)
        query = torch.div(idx, logits.shape[2], rounding_mode="floor")
        labels = idx % logits.shape[2]
        xyxy = torch.gather(pixel_boxes(boxes, target_sizes), 1, query.unsqueeze(-1).expand(-1, -1, 4))
        results = detections(scores, labels, xyxy, self.nms_iou_threshold)
        if query_mask is not None:  # pairs of unreported queries scored -1 (they suppress nothing in the NMS)
            results = [{k: v[r["scores"] >= 0] for k, v in r.items()} for r in results]
        return results


class SoftmaxPostProcess(nn.Module):
    """DETR's: one detection per query, its most probable real class under the softmax over the classes and
    the no-object class (the last logit, dropped after the softmax), boxes scaled to image size, in query
    order. With num_select below the number of queries only the num_select best-scoring queries are kept
    (still in query order); nms_iou_threshold > 0 adds per-class NMS."""

    def __init__(self, num_select: int = 100, nms_iou_threshold: float = -1):
        super().__init__()
        self.num_select = num_select
        self.nms_iou_threshold = nms_iou_threshold

    @torch.no_grad()
    def forward(self, outputs: Dict, target_sizes: Tensor) -> List[Dict[str, Tensor]]:
        """target_sizes (B, 2) as (h, w) -> per image 'scores' (k,), 'labels' (k,), 'boxes' (k, 4) xyxy pixels,
        k = min(num_select, Q)."""
        prob = outputs["pred_logits"].float().softmax(-1)[..., :-1]  # (B, Q, K - 1)
        scores, labels = prob.max(-1)
        xyxy = pixel_boxes(outputs["pred_boxes"], target_sizes)
        if self.num_select < scores.shape[1]:
            query = torch.topk(scores, self.num_select, dim=1).indices.sort(dim=1).values  # (B, k)
            scores, labels = scores.gather(1, query), labels.gather(1, query)
            xyxy = xyxy.gather(1, query.unsqueeze(-1).expand(-1, -1, 4))
        return detections(scores, labels, xyxy, self.nms_iou_threshold)
