"""DINO's training losses (SetCriterion).

For every supervised prediction set (the final decoder layer, each earlier layer "_i", the
two-stage proposals "_interm") queries are Hungarian-matched to the ground truth and the
matched pairs get a sigmoid focal classification loss, an L1 box loss and a GIoU loss.
Denoising queries ("_dn", "_dn_i") are supervised by their known assignment instead.
All losses are normalised by the number of ground-truth boxes across all processes.
"""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou_loss, sigmoid_focal_loss

from util import dist as dist_utils

LOSS_NAMES = ("loss_ce", "loss_bbox", "loss_giou")


class SetCriterion(nn.Module):
    """Computes the loss dict; `weight_dict` gives the weight of each entry in the total."""

    def __init__(self, num_classes: int, matcher: nn.Module, weight_dict: Dict[str, float],
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def set_losses(self, outputs: Dict[str, Tensor], targets: List[Dict], indices: List[Tuple[Tensor, Tensor]],
                   num_boxes: float, log: bool = False) -> Dict[str, Tensor]:
        """Focal, L1 and GIoU losses of one prediction set for given (query, target) indices."""
        logits = outputs["pred_logits"]  # (B, Q, K)
        batch_idx, src_idx, tgt_labels, src_boxes, tgt_boxes = self.matched_pairs(outputs, targets, indices)
        onehot = torch.zeros_like(logits, dtype=torch.float32)
        onehot[batch_idx, src_idx, tgt_labels] = 1.0
        loss_ce = sigmoid_focal_loss(logits.float(), onehot, alpha=self.focal_alpha, gamma=self.focal_gamma,
                                     reduction="sum") / num_boxes
        l1 = F.l1_loss(src_boxes, tgt_boxes, reduction="none")
        losses = {
            "loss_ce": loss_ce,
            "loss_bbox": l1.sum() / num_boxes,
            "loss_giou": generalized_box_iou_loss(box_convert(src_boxes, "cxcywh", "xyxy"),
                                                  box_convert(tgt_boxes, "cxcywh", "xyxy"),
                                                  reduction="sum") / num_boxes,
        }
        if log:
            losses.update(self.log_terms(logits, batch_idx, src_idx, tgt_labels, l1, num_boxes))
        return losses

    @staticmethod
    def matched_pairs(outputs: Dict[str, Tensor], targets: List[Dict], indices: List[Tuple[Tensor, Tensor]]
                      ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The P matched pairs of one set: image index (P,), query index (P,), target label (P,),
        predicted box (P, 4) float and target box (P, 4), cxcywh, all on the predictions' device."""
        logits = outputs["pred_logits"]
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)]).to(logits.device)
        src_idx = torch.cat([src for src, _ in indices]).to(logits.device)
        tgt_labels = torch.cat([t["labels"][j.to(t["labels"].device)] for t, (_, j) in zip(targets, indices)])
        src_boxes = outputs["pred_boxes"][batch_idx, src_idx].float()
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

    def match(self, suffix: str, preds: Dict[str, Tensor], targets: List[Dict]) -> List[Tuple[Tensor, Tensor]]:
        """(query, target) indices of the prediction set `suffix` ('', '_i', '_interm'): one-to-one."""
        return self.matcher(preds, targets)

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

    def forward(self, outputs: Dict, targets: List[Dict], return_indices: bool = False):
        """outputs: DINO's output dict; targets: per image 'labels' (K_i,), 'boxes' (K_i, 4) cxcywh."""
        device = outputs["pred_logits"].device
        num_boxes = self.num_boxes(targets, device)
        sets = [("", outputs, True)]
        sets += [(f"_{i}", aux, False) for i, aux in enumerate(outputs.get("aux_outputs", []))]
        if "interm_outputs" in outputs:
            sets.append(("_interm", outputs["interm_outputs"], False))
        losses: Dict[str, Tensor] = {}
        final_indices = None
        for suffix, preds, log in sets:
            indices = self.match(suffix, preds, targets)
            if suffix == "":
                final_indices = indices
            losses.update({k + suffix: v for k, v in self.set_losses(preds, targets, indices, num_boxes, log).items()})

        dn_meta: Optional[Dict] = outputs.get("dn_meta")
        if self.training and dn_meta and "output_known_lbs_bboxes" in dn_meta:
            known = dn_meta["output_known_lbs_bboxes"]
            dn_idx = self.dn_indices(targets, dn_meta)
            dn_boxes = num_boxes * dn_meta["num_dn_group"]
            dn_sets = [("_dn", known)] + [(f"_dn_{i}", aux) for i, aux in enumerate(known["aux_outputs"])]
            for suffix, preds in dn_sets:
                losses.update({k + suffix: v for k, v in self.dn_set_losses(preds, targets, dn_idx, dn_boxes).items()})
        else:
            # no denoising in this batch (evaluation): report zeros so logs keep their keys
            zero = outputs["pred_logits"].new_zeros(())
            n_aux = len(outputs.get("aux_outputs", []))
            for suffix in ["_dn"] + [f"_dn_{i}" for i in range(n_aux)]:
                losses.update({k + suffix: zero for k in LOSS_NAMES})
        return (losses, final_indices) if return_indices else losses


def build_weight_dict(args) -> Dict[str, float]:
    """Loss weights, DINO's 39 entries: main, _dn, _0.._{dec_layers-2} (+ _dn_i), _interm.

    dn_label_coef / dn_bbox_coef scale the denoising classification / box losses."""
    base = {"loss_ce": args.cls_loss_coef, "loss_bbox": args.bbox_loss_coef, "loss_giou": args.giou_loss_coef}
    dn_label, dn_bbox = args.dn_label_coef, args.dn_bbox_coef
    dn = {"loss_ce_dn": base["loss_ce"] * dn_label, "loss_bbox_dn": base["loss_bbox"] * dn_bbox,
          "loss_giou_dn": base["loss_giou"] * dn_bbox}
    per_layer = dict(base, **dn) if args.use_dn else dict(base)
    weights = dict(per_layer)
    if args.aux_loss:
        for i in range(args.dec_layers - 1):
            weights.update({f"{k}_{i}": v for k, v in per_layer.items()})
    no_box = args.no_interm_box_loss
    interm_scale = {"loss_ce": 1.0, "loss_bbox": 0.0 if no_box else 1.0, "loss_giou": 0.0 if no_box else 1.0}
    weights.update({f"{k}_interm": v * args.interm_loss_coef * interm_scale[k] for k, v in base.items()})
    return weights
