"""AlignDETR (models/dino/aligndetr.py): IA-BCE, one-to-k matching, rank weights, the sets
supervised, and that the model stays DINO's. Expected values are worked out by hand (IoU of
shifted boxes, rank weights exp(-r / tau)) or by naive per-element loops written here."""
import math
import os

import pytest
import torch

from engine.config import load_config
from models import build_model
from models.common.criterion import PredictionSet, SetCriterion, SetKind, SetSpec, decoder_set_specs
from models.common.matcher import HungarianMatcher
from models.dino.aligndetr import AlignDETRCriterion, OneToManyMatcher, capped_k, rank_weights
from util.slconfig import ConfigError

from tiny_configs import ROOT, tiny_args, tiny_batch

WEIGHTS = {"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2}
GT = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
TAU = 1.5


def sets(num_layers):
    """DINO's sets of a decoder of num_layers layers, every kind weighted by WEIGHTS."""
    specs = decoder_set_specs(num_layers, aux_loss=True, encoder=True, denoising=True)
    return specs, {kind: WEIGHTS for kind in SetKind}


def criterion(o2m_k=(2, 2, 1), alpha=0.25, gamma=2.0, tau=TAU):
    c = AlignDETRCriterion(3, OneToManyMatcher(), *sets(max(len(o2m_k) - 1, 1)), list(o2m_k), alpha=alpha,
                           gamma=gamma, tau=tau)
    c.eval()
    return c


def shifted(dx):
    """GT shifted by dx along x: IoU with GT = (0.2 - dx) / (0.2 + dx) for 0 <= dx <= 0.2."""
    box = GT.clone()
    box[0, 0] += dx
    return box


def naive_ia_bce(logits, positives, alpha=0.25, gamma=2.0):
    """Sum over every element, one python float at a time. positives: {(q, c): (iou, w)}."""
    total = 0.0
    for q in range(logits.shape[0]):
        for c in range(logits.shape[1]):
            p = 1 / (1 + math.exp(-float(logits[q, c])))
            if (q, c) in positives:
                iou, w = positives[(q, c)]
                t = w * max(p ** alpha * iou ** (1 - alpha), 0.01)
                total += -(t * math.log(p) + (1 - t) * math.log(1 - p))
            else:
                total += p ** gamma * -math.log(1 - p)
    return total


# ---- IA-BCE ----------------------------------------------------------------------------------

def test_ia_bce_value_and_gradient_match_the_formula():
    # 3 predictions x 3 classes; prediction 1 is matched to the GT (class 2) with IoU 1/3
    logits = torch.tensor([[[0.3, -1.0, 0.5], [-0.2, 0.4, 1.2], [2.0, -3.0, 0.0]]], requires_grad=True)
    boxes = torch.cat([shifted(0.05), shifted(0.1), shifted(0.0)])[None]
    out = {"pred_logits": logits, "pred_boxes": boxes}
    targets = [{"labels": torch.tensor([2]), "boxes": GT}]
    losses = criterion().set_losses(out, targets, [(torch.tensor([1]), torch.tensor([0]))], num_boxes=1.0)
    expected = naive_ia_bce(logits[0].detach(), {(1, 2): (1 / 3, 1.0)})
    assert losses["loss_ce"].item() == pytest.approx(expected, rel=1e-5)

    losses["loss_ce"].backward()
    # d/dx: positive (t detached) p - t; negative p^g * softplus(x) -> g p^g (1-p) softplus(x) + p^(g+1)
    x = logits.detach()[0]
    p = x.sigmoid()
    grad = 2 * p ** 2 * (1 - p) * torch.nn.functional.softplus(x) + p ** 3
    t = max(p[1, 2].item() ** 0.25 * (1 / 3) ** 0.75, 0.01)
    grad[1, 2] = p[1, 2] - t
    assert torch.allclose(logits.grad[0], grad, rtol=1e-5, atol=1e-7)


def test_ia_bce_target_is_clamped_below_at_0_01():
    # a matched prediction that does not overlap its GT: IoU 0, so t = 0.01, not 0
    logits = torch.zeros(1, 1, 3)
    out = {"pred_logits": logits, "pred_boxes": torch.tensor([[[0.1, 0.1, 0.05, 0.05]]])}
    losses = criterion().set_losses(out, [{"labels": torch.tensor([0]), "boxes": GT}],
                                    [(torch.tensor([0]), torch.tensor([0]))], num_boxes=1.0)
    pos = -(0.01 * math.log(0.5) + 0.99 * math.log(0.5))
    neg = 0.5 ** 2 * math.log(2)
    assert losses["loss_ce"].item() == pytest.approx(pos + 2 * neg, rel=1e-5)


def test_alpha_and_gamma_change_the_loss_as_the_formula_says():
    logits = torch.tensor([[[0.7, -0.4], [1.5, 0.2]]])
    out = {"pred_logits": logits, "pred_boxes": torch.cat([shifted(0.1), shifted(0.02)])[None]}
    targets = [{"labels": torch.tensor([1]), "boxes": GT}]
    indices = [(torch.tensor([0]), torch.tensor([0]))]
    for alpha, gamma in [(0.0, 1.0), (0.5, 3.0)]:
        c = AlignDETRCriterion(2, OneToManyMatcher(), *sets(1), [1, 1], alpha=alpha, gamma=gamma)
        value = c.set_losses(out, targets, indices, num_boxes=1.0)["loss_ce"].item()
        assert value == pytest.approx(naive_ia_bce(logits[0], {(0, 1): (1 / 3, 1.0)}, alpha, gamma), rel=1e-5)


# ---- rank weights ----------------------------------------------------------------------------

def test_rank_weights_rank_within_each_group_best_first():
    quality = torch.tensor([0.3, 0.6, 0.5, 0.9, 0.1])
    group = torch.tensor([0, 0, 0, 1, 1])
    rank = torch.tensor([2, 0, 1, 0, 1])
    assert torch.allclose(rank_weights(quality, group, TAU), torch.exp(-rank / TAU))
    # groups need not be contiguous; ties keep the pairs' order
    w = rank_weights(torch.tensor([0.4, 0.2, 0.4, 0.2]), torch.tensor([5, 3, 5, 3]), 2.0)
    assert torch.allclose(w, torch.exp(-torch.tensor([0.0, 0.0, 1.0, 1.0]) / 2.0))


def test_rank_weights_scale_the_target_and_the_box_losses_of_k_matches():
    # one GT, two matches: prediction 0 (IoU 1/3) ranks below prediction 1 (IoU 0.6 / 0.8 = 0.75)
    logits = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    boxes = torch.cat([shifted(0.1), shifted(0.025)])[None]
    out = {"pred_logits": logits, "pred_boxes": boxes}
    losses = criterion().set_losses(out, [{"labels": torch.tensor([0]), "boxes": GT}],
                                    [(torch.tensor([0, 1]), torch.tensor([0, 0]))], num_boxes=1.0)
    w_second = math.exp(-1 / TAU)
    assert losses["loss_bbox"].item() == pytest.approx(w_second * 0.1 + 1.0 * 0.025, rel=1e-5)
    giou = {0.1: 1 - 1 / 3, 0.025: 1 - 0.175 / 0.225}  # GIoU = IoU: the enclosing box is the union
    assert losses["loss_giou"].item() == pytest.approx(w_second * giou[0.1] + giou[0.025], rel=1e-5)
    expected = naive_ia_bce(logits[0], {(0, 0): (1 / 3, w_second), (1, 0): (0.175 / 0.225, 1.0)})
    assert losses["loss_ce"].item() == pytest.approx(expected, rel=1e-5)


# ---- one-to-k matching -----------------------------------------------------------------------

def random_preds(num_queries, seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    return {"pred_logits": torch.randn(batch, num_queries, 3, generator=g),
            "pred_boxes": torch.rand(batch, num_queries, 4, generator=g) * 0.5 + 0.25}


def test_one_to_k_gives_each_ground_truth_k_distinct_predictions():
    preds = random_preds(20)
    targets = [{"labels": torch.tensor([0, 1, 2]), "boxes": torch.rand(3, 4) * 0.4 + 0.3}]
    (src, tgt), = OneToManyMatcher()(preds, targets, k=3)
    assert len(src) == 9 and len(set(src.tolist())) == 9
    assert sorted(tgt.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_one_to_k_takes_the_k_cheapest_predictions_of_a_single_ground_truth():
    # same logits everywhere, predictions further and further from the GT: the two nearest win
    preds = {"pred_logits": torch.zeros(1, 5, 3),
             "pred_boxes": torch.cat([shifted(d) for d in (0.15, 0.02, 0.1, 0.0, 0.05)])[None]}
    (src, tgt), = OneToManyMatcher()(preds, [{"labels": torch.tensor([1]), "boxes": GT}], k=2)
    assert sorted(src.tolist()) == [1, 3] and tgt.tolist() == [0, 0]


def test_k_is_capped_at_half_the_queries_per_image_without_carry_over():
    assert capped_k(2, 3, 10) == 1  # 2 * 3 > 5
    assert capped_k(2, 6, 10) == 1  # never below 1
    assert capped_k(3, 2, 10) == 2  # floor(5 / 2)
    assert capped_k(2, 2, 900) == 2
    preds = random_preds(10, batch=3)
    targets = [{"labels": torch.tensor([0, 1, 2]), "boxes": torch.rand(3, 4) * 0.4 + 0.3},
               {"labels": torch.tensor([1]), "boxes": GT},
               {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    (s0, t0), (s1, t1), (s2, t2) = OneToManyMatcher()(preds, targets, k=3)
    assert sorted(t0.tolist()) == [0, 1, 2]  # capped to 1 in the crowded image
    assert len(s1) == 3 and len(set(s1.tolist())) == 3 and t1.tolist() == [0, 0, 0]  # the next image keeps k=3
    assert len(s2) == 0 and len(t2) == 0


def test_k_of_1_is_dinos_matching():
    preds = random_preds(12, seed=3, batch=2)
    targets = [{"labels": torch.tensor([0, 2]), "boxes": torch.rand(2, 4) * 0.4 + 0.3},
               {"labels": torch.tensor([1]), "boxes": GT}]
    for (s, t), (s_ref, t_ref) in zip(OneToManyMatcher()(preds, targets), HungarianMatcher()(preds, targets)):
        assert s.tolist() == s_ref.tolist() and t.tolist() == t_ref.tolist()


# ---- the sets: k per set, normalisation, denoising ----------------------------------------------

def test_k_per_set_and_the_last_layer_one_to_one():
    c = criterion(o2m_k=(2, 3, 1))
    preds = random_preds(20)
    targets = [{"labels": torch.tensor([0, 1]), "boxes": torch.rand(2, 4) * 0.4 + 0.3}]
    encoder, layer0 = SetSpec(SetKind.ENCODER), SetSpec(SetKind.DECODER_LAYER, 0, 2)
    final = SetSpec(SetKind.FINAL, 1, 2)
    assert [c.k_of_set(s) for s in (encoder, layer0, final)] == [2, 3, 1]
    assert len(c.match(PredictionSet(encoder, preds), targets)[0][0]) == 4
    assert len(c.match(PredictionSet(layer0, preds), targets)[0][0]) == 6
    (src, tgt), = c.match(PredictionSet(final, preds), targets)
    assert len(src) == 2 and sorted(tgt.tolist()) == [0, 1]


def test_losses_are_normalised_by_the_number_of_ground_truth_boxes_not_of_positives():
    # one GT, an earlier layer with k = 2: both matches count, divided by 1 (num_boxes), not by 2
    far = torch.tensor([[0.2, 0.2, 0.05, 0.05], [0.8, 0.8, 0.05, 0.05]])
    boxes = torch.cat([shifted(0.1), shifted(0.025), far])[None]  # 4 queries: the cap allows k = 2
    aux = {"pred_logits": torch.zeros(1, 4, 3), "pred_boxes": boxes}
    out = {"pred_logits": torch.zeros(1, 4, 3), "pred_boxes": boxes, "aux_outputs": [aux]}
    losses = criterion(o2m_k=(2, 2, 1))(out, [{"labels": torch.tensor([0]), "boxes": GT}])
    assert losses["loss_bbox_0"].item() == pytest.approx(math.exp(-1 / TAU) * 0.1 + 0.025, rel=1e-5)
    assert losses["loss_bbox"].item() == pytest.approx(0.025, rel=1e-5)  # last layer: the best one only


def denoising_outputs():
    """2 DN groups of one GT; group 0's positive is exact, group 1's shifted by 0.1."""
    pad = 4  # 2 groups x (positive + negative) x max_gt 1
    dn_boxes = torch.full((1, pad, 4), 0.5)
    dn_boxes[0, 0], dn_boxes[0, 2] = GT[0], shifted(0.1)[0]
    known = {"pred_logits": torch.zeros(1, pad, 3), "pred_boxes": dn_boxes, "aux_outputs": []}
    return {"pred_logits": torch.zeros(1, 3, 3), "pred_boxes": torch.cat([GT, shifted(0.05), shifted(0.1)])[None],
            "dn_meta": {"pad_size": pad, "num_dn_group": 2, "output_known_lbs_bboxes": known}}


def test_denoising_keeps_its_assignment_and_gets_no_rank_weights():
    c = criterion(o2m_k=(1,))
    c.train()
    dino = SetCriterion(3, HungarianMatcher(), *sets(1))
    dino.train()
    targets = [{"labels": torch.tensor([0]), "boxes": GT}]
    ours, ref = c(denoising_outputs(), targets), dino(denoising_outputs(), targets)
    # both DN positives weigh 1 (a rank weight would scale the shifted one by exp(-1/1.5)); / (1 box x 2 groups)
    assert ours["loss_bbox_dn"].item() == pytest.approx(0.1 / 2, rel=1e-5)
    assert ours["loss_bbox_dn"].item() == pytest.approx(ref["loss_bbox_dn"].item(), rel=1e-6)
    assert ours["loss_giou_dn"].item() == pytest.approx(ref["loss_giou_dn"].item(), rel=1e-6)
    dn_logits = torch.zeros(4, 3)
    expected = naive_ia_bce(dn_logits, {(0, 0): (1.0, 1.0), (2, 0): (1 / 3, 1.0)}) / 2
    assert ours["loss_ce_dn"].item() == pytest.approx(expected, rel=1e-5)


# ---- the model stays DINO's; config ------------------------------------------------------------

def test_tiny_model_trains_with_dinos_loss_terms_and_weights(seeded):
    torch.manual_seed(0)
    dino_model, dino_crit, _ = build_model(tiny_args())
    model, crit, _ = build_model(tiny_args(criterion_type="aligndetr", o2m_k=[2, 2, 1]))
    assert isinstance(crit, AlignDETRCriterion) and not isinstance(dino_crit, AlignDETRCriterion)
    assert crit.weight_dict == dino_crit.weight_dict
    model.load_state_dict(dino_model.state_dict(), strict=True)  # a DINO checkpoint loads strictly
    model.train()
    crit.train()
    samples, targets = tiny_batch(0)
    losses = crit(model(samples, targets), targets)
    assert set(losses) == set(dino_crit(dino_model(samples, targets), targets))
    total = sum(losses[k] * w for k, w in crit.weight_dict.items())
    total.backward()
    assert torch.isfinite(total)
    assert all(p.grad is not None for n, p in model.named_parameters() if "transformer.decoder.layers.0" in n)


def test_dino_checkpoint_loads_strictly_into_the_aligndetr_model(tmp_path):
    torch.manual_seed(1)
    dino_model, _, _ = build_model(tiny_args(use_hae=True, use_emca=True, num_hae_layers=1))
    path = tmp_path / "dino.pth"
    torch.save({"model": dino_model.state_dict()}, path)
    model, _, _ = build_model(tiny_args(use_hae=True, use_emca=True, num_hae_layers=1,
                                        criterion_type="aligndetr", o2m_k=[2, 2, 1]))
    model.load_state_dict(torch.load(path)["model"], strict=True)
    for k, v in dino_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def config(name):
    return load_config(os.path.join(ROOT, "config", name))


def test_alignDETR_configs_are_dino_but_for_the_criterion_keys():
    dino, ours = config("DINO/DINO_4scale.py"), config("AlignDETR/AlignDETR_4scale.py")
    criterion_keys = {"criterion_type", "aligndetr_alpha", "aligndetr_gamma", "aligndetr_tau", "o2m_k"}
    assert {k for k in dino if dino[k] != ours[k]} == {"criterion_type"}  # the AlignDETR values are the defaults
    assert (ours["criterion_type"], ours["o2m_k"], ours["aligndetr_tau"]) == ("aligndetr", [2] * 6 + [1], 1.5)
    long = config("AlignDETR/AlignDETR_4scale_24ep.py")
    assert {k for k in ours if ours[k] != long[k]} == {"epochs", "lr_drop"} and long["epochs"] == 24
    synth, synth_dino = config("AlignDETR/AlignDETR_synthetic.py"), config("DINO/DINO_synthetic.py")
    assert {k for k in synth if synth[k] != synth_dino[k]} <= criterion_keys
    assert synth["o2m_k"] == [2, 2, 2, 1] and synth["criterion_type"] == "aligndetr"


def test_o2m_k_must_have_one_entry_per_set():
    path = os.path.join(ROOT, "config", "AlignDETR", "AlignDETR_synthetic.py")
    with pytest.raises(ConfigError, match=r"o2m_k=\[2, 1\] has 2 entries for dec_layers=3.*o2m_k=\[2, 2, 2, 1\]"):
        load_config(path, {"o2m_k": [2, 1]})
    with pytest.raises(ConfigError, match="criterion_type"):
        load_config(path, {"criterion_type": "align"})
    with pytest.raises(ConfigError, match="o2m_k"):
        load_config(path, {"o2m_k": [2, 0, 2, 1]})
    # DINO ignores o2m_k, so its default list need not fit a config with fewer decoder layers
    assert load_config(os.path.join(ROOT, "config", "DINO", "DINO_synthetic.py"))["o2m_k"] == [2] * 6 + [1]
