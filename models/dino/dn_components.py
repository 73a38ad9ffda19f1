"""DINO's contrastive denoising (CDN): noised ground-truth queries and their attention mask.

Queries are laid out as [denoising part (pad_size) | matching queries (num_queries)].
The denoising part has `num_groups` groups of 2 * max_gt slots: the first max_gt slots hold
positive queries (boxes jittered by less than half their size), the next max_gt negative
ones (jittered by 1 to 2 times that); images with fewer boxes leave slots as zeros.
"""
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..common.layers import inverse_sigmoid


def cdn_group_count(dn_number: int, max_gt: int) -> int:
    """How many CDN groups fit DINO's budget: dn_number is doubled (positive and negative),
    then split into groups of 2 * max_gt queries; at least one group.

    As in DINO, a doubled budget under 100 is used as the group count itself (a quirk kept
    for parity: with dn_number=20 that is 40 groups), so small configs should keep
    dn_number >= 50.
    """
    if max_gt == 0:
        return 1
    budget = dn_number * 2
    groups = budget // (max_gt * 2) if budget >= 100 else budget
    return max(groups, 1)


def build_cdn_attn_mask(single_pad: int, num_groups: int, num_queries: int, device) -> Tensor:
    """(pad_size + num_queries)^2 bool mask, True = may not attend: matching queries cannot see
    any denoising query, and each denoising group sees only itself and the matching queries."""
    pad_size = single_pad * 2 * num_groups
    size = pad_size + num_queries
    mask = torch.zeros(size, size, dtype=torch.bool, device=device)
    mask[pad_size:, :pad_size] = True
    for g in range(num_groups):
        lo, hi = single_pad * 2 * g, single_pad * 2 * (g + 1)
        mask[lo:hi, :lo] = True
        mask[lo:hi, hi:pad_size] = True
    return mask


def noised_labels(labels: Tensor, noise_ratio: float, num_classes: int) -> Tensor:
    """labels (N,) with a random fraction replaced by random classes. DINO flips half the requested ratio:
    the other half would draw the same label anyway."""
    labels = labels.clone()
    if noise_ratio > 0:
        flip = torch.rand(labels.shape, device=labels.device) < noise_ratio * 0.5
        labels[flip] = torch.randint(0, num_classes, (int(flip.sum()),), device=labels.device)
    return labels


def noised_boxes(boxes: Tensor, negative_idx: Tensor, noise_scale: float) -> Tensor:
    """boxes (N, 4) cxcywh with each corner moved by up to noise_scale x half the box size (positives), or
    by between 1 and 2 times that (the copies at negative_idx: the contrastive negatives), clamped to the
    image."""
    if noise_scale <= 0 or len(boxes) == 0:
        return boxes.clone()
    xyxy = torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], 1)
    half_wh = torch.cat([boxes[:, 2:] / 2, boxes[:, 2:] / 2], 1)
    sign = torch.randint(0, 2, boxes.shape, device=boxes.device, dtype=torch.float32) * 2.0 - 1.0
    part = torch.rand(boxes.shape, device=boxes.device)
    part[negative_idx] += 1.0
    xyxy = (xyxy + part * sign * half_wh * noise_scale).clamp(min=0.0, max=1.0)
    return torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1)


def prepare_for_cdn(targets: List[Dict[str, Tensor]], dn_number: int, label_noise_ratio: float,
                    box_noise_scale: float, num_queries: int, num_classes: int, hidden_dim: int,
                    label_enc: nn.Embedding) -> Tuple[Tensor, Tensor, Tensor, Dict]:
    """Build the denoising queries for a training batch.

    targets: per image 'labels' (K_i,) and 'boxes' (K_i, 4) normalised cxcywh.
    Returns input_query_label (B, pad_size, hidden_dim), input_query_bbox (B, pad_size, 4)
    as logits, attn_mask (pad_size + num_queries, same) and dn_meta {'pad_size', 'num_dn_group'}.
    """
    device = label_enc.weight.device
    counts = [len(t["labels"]) for t in targets]
    max_gt = max(counts) if counts else 0
    groups = cdn_group_count(dn_number, max_gt)
    labels = torch.cat([t["labels"] for t in targets]).to(device)
    boxes = torch.cat([t["boxes"] for t in targets]).to(device)
    batch_idx = torch.cat([torch.full((n,), i, dtype=torch.long, device=device) for i, n in enumerate(counts)])
    n_total = len(labels)

    # every box is repeated 2 * groups times: group g holds copies [2g*n_total, (2g+1)*n_total)
    # as positives and the next n_total as negatives
    known_bid = batch_idx.repeat(2 * groups)
    dn_labels = noised_labels(labels.repeat(2 * groups), label_noise_ratio, num_classes)
    positive_idx = (torch.arange(n_total, device=device)[None]
                    + torch.arange(groups, device=device)[:, None] * n_total * 2).flatten()
    dn_boxes = noised_boxes(boxes.repeat(2 * groups, 1), positive_idx + n_total, box_noise_scale)

    single_pad = max_gt
    pad_size = single_pad * 2 * groups
    input_query_label = torch.zeros(len(targets), pad_size, hidden_dim, device=device)
    input_query_bbox = torch.zeros(len(targets), pad_size, 4, device=device)
    if n_total:
        # slot of each copy inside its image's part: index within the image + group offset
        within = torch.cat([torch.arange(n, device=device) for n in counts])
        slots = torch.cat([within + single_pad * i for i in range(2 * groups)])
        input_query_label[known_bid, slots] = label_enc(dn_labels.long())
        input_query_bbox[known_bid, slots] = inverse_sigmoid(dn_boxes)
    attn_mask = build_cdn_attn_mask(single_pad, groups, num_queries, device)
    return input_query_label, input_query_bbox, attn_mask, {"pad_size": pad_size, "num_dn_group": groups}


def dn_post_process(outputs_class: Tensor, outputs_coord: Tensor, dn_meta: Optional[Dict]):
    """Split (layers, B, pad_size + Q, ...) predictions: the denoising part goes into
    dn_meta['output_known_lbs_bboxes'] (per layer), the matching part is returned."""
    if not dn_meta or dn_meta["pad_size"] <= 0:
        return outputs_class, outputs_coord
    pad = dn_meta["pad_size"]
    dn_meta["output_known_lbs_bboxes"] = {
        "pred_logits": outputs_class[-1][:, :pad], "pred_boxes": outputs_coord[-1][:, :pad],
        "aux_outputs": [{"pred_logits": c[:, :pad], "pred_boxes": b[:, :pad]}
                        for c, b in zip(outputs_class[:-1], outputs_coord[:-1])],
    }
    return outputs_class[:, :, pad:], outputs_coord[:, :, pad:]
