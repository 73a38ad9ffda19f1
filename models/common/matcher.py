"""Hungarian matching between predictions and ground truth (scipy's linear_sum_assignment).

`HungarianMatcher` prices a query's class with the focal cost of sigmoid probabilities (DINO, Deformable
DETR); `SoftmaxHungarianMatcher` with minus its softmax probability (DETR, whose classes share one softmax
with a no-object class). The box costs are the same.
"""
from typing import Dict, List, Tuple

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou


def focal_class_cost(prob: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Per-class matching cost from sigmoid probabilities: the focal loss of calling the class
    positive minus that of calling it negative. prob (Q, K) -> (Q, K)."""
    neg = (1 - alpha) * prob ** gamma * -(1 - prob + 1e-8).log()
    pos = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()
    return pos - neg


class HungarianMatcher(nn.Module):
    """One-to-one assignment minimising cost_class * focal + cost_bbox * L1 + cost_giou * (-GIoU)."""

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 focal_alpha: float = 0.25):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("all matcher costs are 0: set set_cost_class, set_cost_bbox or set_cost_giou")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal_alpha = focal_alpha

    def class_cost(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Cost of giving each query each target's class: logits (Q, K), labels (n,) -> (Q, n), the focal cost
        of the sigmoid probabilities."""
        return focal_class_cost(logits.float().sigmoid(), self.focal_alpha)[:, labels]

    @torch.no_grad()
    def forward(self, outputs: Dict[str, Tensor], targets: List[Dict[str, Tensor]]) -> List[Tuple[Tensor, Tensor]]:
        """outputs: 'pred_logits' (B, Q, K), 'pred_boxes' (B, Q, 4) cxcywh; targets: 'labels', 'boxes'.

        Returns per image (query indices, target indices), each int64 of length min(Q, K_i).
        Cost matrices are built per image (Q x K_i) rather than for the whole batch.
        """
        indices = []
        for logits, boxes, t in zip(outputs["pred_logits"], outputs["pred_boxes"], targets):
            if len(t["labels"]) == 0:
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty))
                continue
            boxes = boxes.float()
            tgt_boxes = t["boxes"].to(boxes)
            cost = (self.cost_class * self.class_cost(logits, t["labels"])
                    + self.cost_bbox * torch.cdist(boxes, tgt_boxes, p=1)
                    - self.cost_giou * generalized_box_iou(box_convert(boxes, "cxcywh", "xyxy"),
                                                           box_convert(tgt_boxes, "cxcywh", "xyxy")))
            # NaN/inf predictions (a diverged step) still get an assignment, so the loss turns
            # non-finite and the training loop's non-finite handling reports it (or skips the step)
            cost = torch.nan_to_num(cost, nan=1e8, posinf=1e8, neginf=-1e8)
            i, j = linear_sum_assignment(cost.cpu().numpy())
            indices.append((torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)))
        return indices


class SoftmaxHungarianMatcher(HungarianMatcher):
    """DETR's matching: the class cost is -p(class), p the softmax over the K - 1 classes and the no-object
    class (the last logit); DETR weighs it 1 against L1 5 and GIoU 2."""

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0):
        super().__init__(cost_class, cost_bbox, cost_giou)

    def class_cost(self, logits: Tensor, labels: Tensor) -> Tensor:
        return -logits.float().softmax(-1)[:, labels]


def build_matcher(args) -> HungarianMatcher:
    return HungarianMatcher(args.set_cost_class, args.set_cost_bbox, args.set_cost_giou, args.focal_alpha)
