"""Post-processing: a detector's raw outputs -> per-image scores, labels and boxes in pixels.

Each detector picks its post-processor in its builder: `PostProcess` (sigmoid classes, top-k over
queries x classes: DINO, Deformable DETR, ...).
"""
from typing import Dict, List

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_convert


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
        xyxy = torch.gather(box_convert(boxes.float(), "cxcywh", "xyxy"), 1, query.unsqueeze(-1).expand(-1, -1, 4))
        h, w = target_sizes.float().unbind(1)
        xyxy = xyxy * torch.stack([w, h, w, h], 1)[:, None]
        results = []
        for s, lab, b in zip(scores, labels, xyxy):
            if query_mask is not None:
                s, lab, b = s[s >= 0], lab[s >= 0], b[s >= 0]
            if self.nms_iou_threshold > 0:
                keep = batched_nms(b, s, lab, self.nms_iou_threshold)
                s, lab, b = s[keep], lab[keep], b[keep]
            results.append({"scores": s, "labels": lab, "boxes": b})
        return results
