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


def test_sets_and_weight_table_follow_the_model_configuration():
    """The criterion lists a model's sets with their kind and layer, and the weight table is derived from
    them and the per-kind weights; loss keys keep DINO's suffixes."""
    specs = decoder_set_specs(3, aux_loss=True, encoder=True, denoising=True)
    assert [(s.kind.value, s.layer, s.suffix) for s in specs] == [
        ("final", 2, ""), ("denoising", 2, "_dn"), ("decoder_layer", 0, "_0"), ("denoising", 0, "_dn_0"),
        ("decoder_layer", 1, "_1"), ("denoising", 1, "_dn_1"), ("encoder", None, "_interm")]
    weights = {SetKind.FINAL: {"loss_ce": 1.0}, SetKind.DECODER_LAYER: {"loss_ce": 2.0},
               SetKind.DENOISING: {"loss_ce": 3.0}, SetKind.ENCODER: {"loss_ce": 4.0, "loss_bbox": 0.5}}
    c = SetCriterion(3, HungarianMatcher(), specs, weights)
    assert c.weight_dict == {"loss_ce": 1.0, "loss_ce_dn": 3.0, "loss_ce_0": 2.0, "loss_ce_dn_0": 3.0,
                             "loss_ce_1": 2.0, "loss_ce_dn_1": 3.0, "loss_ce_interm": 4.0, "loss_bbox_interm": 0.5}
    no_aux = decoder_set_specs(3, aux_loss=False, encoder=False, denoising=False)
    assert [(s.kind.value, s.layer) for s in no_aux] == [("final", 2)]


def test_matched_sets_are_enumerated_by_kind_and_a_variant_chooses_per_kind():
    """matched_sets pairs each spec with its predictions (final, earlier layers, encoder proposals); a
    subclass picks its matching from the set's kind and layer, never from a loss-key name."""
    specs = decoder_set_specs(2, aux_loss=True, encoder=True, denoising=False)
    seen = []

    class Recording(SetCriterion):
        def match(self, pset, targets):
            seen.append((pset.spec.kind, pset.spec.layer))
            return super().match(pset, targets)

    c = Recording(3, HungarianMatcher(), specs, {kind: WEIGHTS for kind in SetKind})
    c.eval()
    preds = {"pred_logits": torch.zeros(1, 3, 3), "pred_boxes": torch.cat([BOXES, BOXES[:1]])[None]}
    out = dict(preds, aux_outputs=[dict(preds)], interm_outputs=dict(preds))
    losses = c(out, [{"labels": LABELS, "boxes": BOXES}])
    assert seen == [(SetKind.FINAL, 1), (SetKind.DECODER_LAYER, 0), (SetKind.ENCODER, None)]
    assert {"loss_ce", "loss_ce_0", "loss_ce_interm"} <= set(losses)
    del out["interm_outputs"]  # a set the outputs lack is skipped
    assert "loss_ce_interm" not in c(out, [{"labels": LABELS, "boxes": BOXES}])
