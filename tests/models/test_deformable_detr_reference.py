"""Deformable DETR gives the official code's outputs (issue 21, item 3).

tests/data/deformable_detr_reference holds, for the four variants (multi-scale, + box refinement,
++ two-stage, single-scale), what fundamentalvision/Deformable-DETR@11169a6 computes on two padded images
(float32, CPU, its pure-PyTorch deformable attention) with every weight from a rule keyed by parameter name
(its README; tests/official_rule_weights.py): every decoder layer's logits and boxes, the two-stage encoder
proposals, the post-processed detections, the matcher's indices and the training loss terms for given
targets. Here the same weights go into this project's model, built from config/DeformableDETR/<variant>.py
with the fixture's flags (num_queries 100, dropout 0), and:
  * outputs agree within max(1e-4, 3 x the fixture's float32 noise of that output) (its fp32-vs-fp64
    difference, README "Comparing");
  * loss terms within 1e-4 relative;
  * post-processed detections as sets (sorted by label and query: consecutive scores can be closer than
    the noise); two-stage slots aligned to the official top-k order (`derived.enc_topk_indices`), since
    nearly tied proposal scores may swap slots and the decoder has no per-slot parameters.

`python tests/models/test_deformable_detr_reference.py` prints the largest differences per variant.
"""
import functools
import os
import sys
from typing import Dict, Optional

import pytest
import torch

if __name__ == "__main__":  # run as a script: make the repository and tests/ importable
    _root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path[:0] = [_root, os.path.join(_root, "tests")]

from models import build_model  # noqa: E402
from models.common.postprocess import PostProcess  # noqa: E402
from util.misc import nested_tensor_from_tensor_list  # noqa: E402

from official_rule_weights import fixture_path, read_keys, rule_state  # noqa: E402
from tiny_configs import config_args  # noqa: E402

FIXTURE = fixture_path("deformable_detr_reference")
VARIANTS = {"multiscale": "deformable_detr.py", "box_refine": "deformable_detr_refine.py",
            "two_stage": "deformable_detr_two_stage.py", "single_scale": "deformable_detr_single_scale.py"}
KEY_COUNTS = {"multiscale": 561, "box_refine": 597, "two_stage": 630, "single_scale": 549}
FLOOR = 1e-4  # outputs: at least this absolute tolerance
NOISE_FACTOR = 3  # ... or this many times the fixture's float32 noise of the output
LOSS_RTOL = 1e-4
LOG_ONLY = ("cardinality_error",)  # the official criterion's logged count, not a loss (DINO and this project drop it)


def rows(variant: str):
    return read_keys(os.path.join(FIXTURE, f"keys_{variant}.tsv"))


@functools.lru_cache(maxsize=None)
def reference(variant: str) -> Dict:
    return torch.load(os.path.join(FIXTURE, f"outputs_{variant}.pt"), weights_only=True)


@functools.lru_cache(maxsize=None)
def inputs():
    """(NestedTensor of the two normalised, padded images, targets, orig_target_sizes)."""
    data = torch.load(os.path.join(FIXTURE, "inputs.pt"), weights_only=True)
    mean, std = torch.tensor(data["normalize_mean"]), torch.tensor(data["normalize_std"])
    images = [(im.float() / 255 - mean[:, None, None]) / std[:, None, None] for im in data["images"]]
    return nested_tensor_from_tensor_list(images), data["targets"], data["orig_target_sizes"]


def build(variant: str, msda_backend: str = "pytorch"):
    """(model, criterion) of the variant's config with the fixture's flags and the rule's weights."""
    model, criterion, _ = build_model(config_args(f"DeformableDETR/{VARIANTS[variant]}", num_queries=100,
                                                  dropout=0.0, msda_backend=msda_backend))
    model.load_state_dict(rule_state(rows(variant)), strict=True)
    return model, criterion


@functools.lru_cache(maxsize=None)
def run(variant: str, msda_backend: str = "pytorch"):
    """This project's eval outputs, post-processed detections, training losses and matcher indices."""
    model, criterion = build(variant, msda_backend)
    samples, targets, sizes = inputs()
    model.eval()
    with torch.no_grad():
        out = model(samples)
        detections = PostProcess(num_select=100)(out, sizes)
        model.train()
        criterion.train()
        train_out = model(samples, targets)
        indices = [criterion.match(pset, criterion.set_targets(pset.spec, targets))
                   for pset in criterion.matched_sets(train_out)]
        losses = criterion(train_out, targets)
    weighted = sum(losses[k] * w for k, w in criterion.weight_dict.items() if k in losses)
    return out, detections, {k: float(v) for k, v in losses.items()}, float(weighted), indices, criterion.weight_dict


def slot_order(variant: str, out: Dict) -> Optional[torch.Tensor]:
    """Two-stage: (B, Q) this model's slot of each official slot (both are top-k orders of the same proposals
    by class channel 0); None for the other variants (the slots are the learned queries)."""
    if variant != "two_stage":
        return None
    ours = torch.topk(out["enc_outputs"]["pred_logits"][..., 0], 100, dim=1)[1]
    theirs = reference(variant)["derived"]["enc_topk_indices"]
    assert [sorted(o.tolist()) for o in ours] == [sorted(t.tolist()) for t in theirs], "other proposals selected"
    return torch.stack([torch.tensor([int((o == t).nonzero()) for t in th]) for o, th in zip(ours, theirs)])


def aligned(x: torch.Tensor, order: Optional[torch.Tensor]) -> torch.Tensor:
    return x if order is None else torch.stack([xi[o] for xi, o in zip(x, order)])


def tolerance(variant: str, output: str) -> float:
    noise = reference(variant)["meta"]["fp32_vs_fp64"]["max_abs_by_output"]
    return max(FLOOR, NOISE_FACTOR * noise[output])


def output_differences(variant: str, msda_backend: str = "pytorch") -> Dict[str, float]:
    """Max |ours - official| per output: the final layer, each earlier layer (aux.i) and the encoder proposals."""
    out = run(variant, msda_backend)[0]
    ref = reference(variant)["eval"]
    order = slot_order(variant, out)
    diffs = {}
    layers = [("", out, ref)] + [(f"aux.{i}.", a, b) for i, (a, b) in enumerate(zip(out["aux_outputs"],
                                                                                        ref["aux_outputs"]))]
    assert len(layers) == 6
    for prefix, ours, theirs in layers:
        for name in ("pred_logits", "pred_boxes"):
            diffs[prefix + name] = (aligned(ours[name], order) - theirs[name]).abs().max().item()
    if "enc_outputs" in ref:
        for name in ("pred_logits", "pred_boxes"):
            diffs["enc_outputs." + name] = (out["enc_outputs"][name] - ref["enc_outputs"][name]).abs().max().item()
    return diffs


def loss_differences(variant: str, msda_backend: str = "pytorch") -> Dict[str, float]:
    """|ours - official| / |official| per loss term of the official loss dict (log-only counts left out), and
    of the weighted total ('weighted_loss')."""
    _, _, losses, weighted, _, _ = run(variant, msda_backend)
    ref = reference(variant)["train"]
    diffs = {k: abs(losses[k] - float(v)) / abs(float(v)) for k, v in ref["loss_dict"].items()
             if not k.startswith(LOG_ONLY)}
    diffs["weighted_loss"] = abs(weighted - float(ref["weighted_loss"])) / abs(float(ref["weighted_loss"]))
    return diffs


def output_tolerance(variant: str, name: str) -> float:
    kind = name.rsplit(".", 1)[-1]
    return tolerance(variant, "enc_outputs." + kind if name.startswith("enc_outputs") else kind)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_state_dict_is_the_official_layout(variant):
    """Key for key, in the official order, same shapes, and the same tensors shared (the aliased heads)."""
    model, _, _ = build_model(config_args(f"DeformableDETR/{VARIANTS[variant]}", num_queries=100,
                                          msda_backend="pytorch"))
    state = model.state_dict()
    official = rows(variant)
    assert len(official) == KEY_COUNTS[variant]
    assert [(k, tuple(v.shape)) for k, v in state.items()] == [(r.key, r.shape) for r in official]
    first_key = {}
    ours = {k: first_key.setdefault(v.data_ptr(), k) for k, v in state.items()}  # key -> first key of its tensor
    assert {k: a for k, a in ours.items() if a != k} == {r.key: r.alias for r in official if r.alias}


def test_rule_weights_are_the_fixtures():
    """The rule restated here gives the fixture's sums and first values (every variant's keys)."""
    for variant in VARIANTS:
        state = rule_state(rows(variant))
        for r in rows(variant):
            t = state[r.key]
            assert t.double().sum().item() == pytest.approx(r.sum, rel=1e-6, abs=1e-6), r.key
            assert t.flatten()[0].item() == pytest.approx(r.first, rel=1e-6, abs=1e-9), r.key


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_outputs_match_the_official_code(variant):
    diffs = output_differences(variant)
    assert len(diffs) == (14 if variant == "two_stage" else 12)
    over = {k: (d, output_tolerance(variant, k)) for k, d in diffs.items() if d > output_tolerance(variant, k)}
    assert over == {}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_postprocessed_detections_match_as_sets(variant):
    """The top-100 (query, label) pairs are the official ones, with their scores and boxes (compared as sets)."""
    out, detections, *_ = run(variant)
    order = slot_order(variant, out)
    ref = reference(variant)
    sizes = inputs()[2]
    score_tol = tolerance(variant, "pred_logits")  # sigmoid moves a score by at most a quarter of its logit's change
    box_tol = tolerance(variant, "pred_boxes")
    for image, (ours, theirs) in enumerate(zip(detections, ref["postprocess"])):
        official_slot = torch.arange(100) if order is None else torch.argsort(order[image])
        ours_query = official_slot[source_queries(ours, out["pred_logits"][image])].tolist()
        theirs_query = source_queries(theirs, ref["eval"]["pred_logits"][image]).tolist()
        key_ours = sorted(zip(ours["labels"].tolist(), ours_query, range(100)))
        key_theirs = sorted(zip(theirs["labels"].tolist(), theirs_query, range(100)))
        assert [k[:2] for k in key_ours] == [k[:2] for k in key_theirs]
        i, j = torch.tensor([k[2] for k in key_ours]), torch.tensor([k[2] for k in key_theirs])
        assert (ours["scores"][i] - theirs["scores"][j]).abs().max() <= score_tol
        h, w = sizes[image].tolist()
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        assert ((ours["boxes"][i] - theirs["boxes"][j]) / scale).abs().max() <= box_tol


def source_queries(detections: Dict, logits: torch.Tensor) -> torch.Tensor:
    """The query each detection comes from: the one whose sigmoid score of the detection's label is its score
    (PostProcess returns labels, scores and boxes, not queries). logits (Q, K) -> (100,)."""
    prob = logits.sigmoid()[:, detections["labels"]]  # (Q, 100)
    return (prob - detections["scores"][None]).abs().argmin(0)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_losses_match_the_official_code(variant):
    diffs = loss_differences(variant)
    ref = reference(variant)["train"]
    expected_terms = 25 + (4 if variant == "two_stage" else 0) - 6 - (1 if variant == "two_stage" else 0)
    assert len(diffs) == expected_terms + 1
    assert {k: d for k, d in diffs.items() if d > LOSS_RTOL} == {}
    _, _, losses, _, _, weight_dict = run(variant)
    assert dict(weight_dict) == {k: v for k, v in ref["weight_dict"].items() if k in losses}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matcher_indices_match_the_official_code(variant):
    """Every Hungarian call (final, layers 0..4, two-stage's class-agnostic proposals) picks the official pairs."""
    indices = run(variant)[4]
    ref = reference(variant)["train"]
    assert len(indices) == len(ref["matcher_call_order"])
    for ours, theirs in zip(indices, ref["matcher_indices"]):
        assert [(i.tolist(), j.tolist()) for i, j in ours] == [(i.tolist(), j.tolist()) for i, j in theirs]


def report(msda_backend: str = "pytorch") -> None:
    print(f"largest difference to the official code (msda_backend={msda_backend}; output tolerance "
          f"max({FLOOR:g}, {NOISE_FACTOR} x fixture noise), loss tolerance {LOSS_RTOL:g} relative)")
    for variant in VARIANTS:
        outs = output_differences(variant, msda_backend)
        losses = loss_differences(variant, msda_backend)
        worst = {kind: max((k for k in outs if k.endswith(kind)), key=outs.get) for kind in ("logits", "boxes")}
        loss = max(losses, key=losses.get)
        print(f"{variant:13s} " + "  ".join(f"{k} {outs[k]:.2e} (tol {output_tolerance(variant, k):.1e})"
                                            for k in worst.values())
              + f"  loss {loss} {losses[loss]:.2e} rel")


if __name__ == "__main__":
    report(*sys.argv[1:2])
