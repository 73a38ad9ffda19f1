import math

import pytest
import torch

from models.common.criterion import SetCriterion, SetKind, decoder_set_specs
from models.common.matcher import HungarianMatcher

BOXES = torch.tensor([[0.3, 0.4, 0.2, 0.2], [0.6, 0.6, 0.4, 0.2]])
LABELS = torch.tensor([1, 2])


WEIGHTS = {"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2}


def criterion():
    """A one-layer decoder's sets (final, its denoising set, the encoder proposals), each kind weighted alike."""
    specs = decoder_set_specs(1, aux_loss=True, encoder=True, denoising=True)
    c = SetCriterion(3, HungarianMatcher(), specs, {kind: WEIGHTS for kind in SetKind})
    c.eval()
    return c


def test_exact_boxes_give_zero_box_losses():
    out = {"pred_logits": torch.zeros(1, 3, 3), "pred_boxes": torch.cat([BOXES, torch.rand(1, 4) * 0.5 + 0.25])[None]}
    losses = criterion()(out, [{"labels": LABELS, "boxes": BOXES}])
    assert losses["loss_bbox"].item() == pytest.approx(0.0, abs=1e-5)
    assert losses["loss_giou"].item() == pytest.approx(0.0, abs=1e-5)


def test_l1_and_giou_values_on_a_known_shift():
    shifted = BOXES.clone()
    shifted[0, 0] += 0.1  # 0.1 in x; the second box exact
    out = {"pred_logits": torch.zeros(1, 2, 3), "pred_boxes": shifted[None]}
    losses = criterion()(out, [{"labels": LABELS, "boxes": BOXES}])
    assert losses["loss_bbox"].item() == pytest.approx(0.1 / 2, rel=1e-5)
    # boxes of 0.2x0.2 shifted by half their width: IoU = 1/3, enclosing box = union, GIoU = 1/3
    assert losses["loss_giou"].item() == pytest.approx((1 - 1 / 3) / 2, rel=1e-5)


def test_focal_loss_value_matches_the_formula():
    logits = torch.zeros(1, 1, 3)  # p = 0.5 everywhere
    out = {"pred_logits": logits, "pred_boxes": BOXES[:1][None]}
    losses = criterion()(out, [{"labels": LABELS[:1], "boxes": BOXES[:1]}])
    pos = 0.25 * 0.5 ** 2 * math.log(2)
    neg = 0.75 * 0.5 ** 2 * math.log(2)
    assert losses["loss_ce"].item() == pytest.approx(pos + 2 * neg, rel=1e-5)


def test_denoising_losses_use_the_known_assignment():
    c = criterion()
    c.train()
    groups, max_gt = 2, 2
    pad = 2 * max_gt * groups
    dn_boxes = torch.zeros(1, pad, 4) + 0.5
    for g in range(groups):
        dn_boxes[0, g * 2 * max_gt: g * 2 * max_gt + 2] = BOXES  # positives exact
    known = {"pred_logits": torch.zeros(1, pad, 3), "pred_boxes": dn_boxes, "aux_outputs": []}
    out = {"pred_logits": torch.zeros(1, 3, 3), "pred_boxes": torch.full((1, 3, 4), 0.5),
           "dn_meta": {"pad_size": pad, "num_dn_group": groups, "output_known_lbs_bboxes": known}}
    losses = c(out, [{"labels": LABELS, "boxes": BOXES}])
    assert losses["loss_bbox_dn"].item() == pytest.approx(0.0, abs=1e-5)
    assert losses["loss_giou_dn"].item() == pytest.approx(0.0, abs=1e-5)
    (src, tgt), = SetCriterion.dn_indices([{"labels": LABELS}], out["dn_meta"])
    assert src.tolist() == [0, 1, 4, 5] and tgt.tolist() == [0, 1, 0, 1]
