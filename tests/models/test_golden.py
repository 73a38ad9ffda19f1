"""Golden numerics of tiny DINO, +HAE, +EMCA and AugDETR, and one test per config switch.

The reference values (tests/data/golden_numerics.json) were generated from the code as it
was when they were committed, with name-keyed weights and fixed inputs (tests/models/golden.py
says exactly how). Regenerate them only after a deliberate change of the numbers, and say why
in the commit:

    python tests/models/test_golden.py --regenerate

test_tolerance_* show what the comparison can see: a 1e-3 relative change of the output of
any single layer fails it, last-bit noise (1e-7 on every layer at once, 1e-6 on any one
layer) passes. test_switch_changes_numbers flips each config key that should change the
numbers and checks that they do change (a key that is read nowhere fails it).
"""
import functools
import json
import os
import re
import sys

import pytest
import torch

if __name__ == "__main__":  # run as a script: make the repository and tests/ importable
    _root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path[:0] = [_root, os.path.join(_root, "tests")]

import golden  # noqa: E402
from golden import VARIANTS, OutputNoise  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN_FILE = os.path.join(ROOT, "tests", "data", "golden_numerics.json")
MODES = ("eval", "train")


def measure(variant: str, mode: str, **overrides):
    return golden.measure(*golden.build(variant, **overrides), mode)


def regenerate(path: str = GOLDEN_FILE) -> None:
    """Write the reference values of every variant and mode to `path`."""
    values = {v: {m: golden.rounded(measure(v, m)) for m in MODES} for v in VARIANTS}
    values["_how"] = ("python tests/models/test_golden.py --regenerate (tests/models/golden.py); torch "
                      + torch.__version__)
    text = json.dumps(values, indent=1, sort_keys=True)
    # lists on one line
    text = re.sub(r"\[\s+([^\[\]]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text + "\n")


@functools.lru_cache(maxsize=None)
def reference():
    with open(GOLDEN_FILE) as f:
        return json.load(f)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_golden_values(variant, mode):
    diffs = golden.compare(measure(variant, mode), reference()[variant][mode])
    assert diffs == [], f"{len(diffs)} values differ, e.g.\n" + "\n".join(diffs[:12])


def test_weights_depend_on_names_not_on_construction():
    """Different construction-time RNG states give the same weights; different keys differ."""
    torch.manual_seed(1)
    a = golden.build("augdetr")[0].state_dict()
    torch.manual_seed(2)
    b = golden.build("augdetr")[0].state_dict()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    w0 = a["transformer.encoder.layers.0.linear1.weight"]
    w1 = a["transformer.encoder.layers.1.linear1.weight"]
    assert not torch.equal(w0, w1) and w0.abs().max() <= (3 / w0.shape[1]) ** 0.5
    variances = [v for k, v in a.items() if k.endswith("running_var")]
    assert variances and all(v.min() >= 0.8 for v in variances)
    # a shared head takes the value of its smallest key, whichever module registered it first
    assert torch.equal(a["bbox_embed.0.layers.0.weight"], a["transformer.decoder.bbox_embed.1.layers.0.weight"])


@functools.lru_cache(maxsize=None)
def _single_layer_deviations(mode: str, rel: float):
    """{module name: max deviation from the unperturbed AugDETR measurement} with `rel` noise on
    that module's output alone, for every module the forward (and backward) of `mode` calls."""
    model, criterion, post = golden.build("augdetr")
    base = golden.measure(model, criterion, post, mode)
    names = OutputNoise.called(model, lambda: golden.measure(model, criterion, post, mode))
    if mode == "train":  # the eval sweep covers the rest; here only what evaluation never calls
        eval_model = golden.build("augdetr")[0]
        seen = set(OutputNoise.called(eval_model, lambda: golden.measure(eval_model, criterion, post, "eval")))
        names = [n for n in names if n not in seen]
    out = {}
    for name in names:
        handles = OutputNoise.apply(model, [name], rel)
        try:
            out[name] = golden.max_deviation(golden.measure(model, criterion, post, mode), base)
        finally:
            for h in handles:
                h.remove()
    return out


@pytest.mark.parametrize("mode", MODES)
def test_tolerance_sees_a_1e3_change_in_any_layer(mode):
    devs = _single_layer_deviations(mode, 1e-3)
    assert len(devs) >= (100 if mode == "eval" else 1)
    blind = {n: d for n, d in devs.items() if d <= golden.RTOL}
    assert blind == {}


def test_tolerance_passes_1e6_noise_on_any_one_layer():
    devs = _single_layer_deviations("eval", 1e-6)
    assert {n: d for n, d in devs.items() if d > golden.RTOL} == {}


@pytest.mark.parametrize("mode", MODES)
def test_tolerance_passes_1e7_noise_on_every_layer_at_once(mode):
    model, criterion, post = golden.build("augdetr")
    base = golden.measure(model, criterion, post, mode)
    names = OutputNoise.called(model, lambda: golden.measure(model, criterion, post, mode))
    OutputNoise.apply(model, names, 1e-7)
    assert golden.compare(golden.measure(model, criterion, post, mode), base) == []


HAE = dict(use_hae=True, num_hae_layers=1)
EMCA = dict(use_emca=True)
FIVE_LEVELS = dict(num_feature_levels=5, return_interm_indices=[0, 1, 2, 3])
# (base switches, flipped switches): the flip must change some golden quantity
SWITCHES = {
    "pe_temperatureH": ({}, dict(pe_temperatureH=10)),
    "pe_temperatureW": ({}, dict(pe_temperatureW=10)),
    "num_feature_levels": ({}, FIVE_LEVELS),
    "return_interm_indices": ({}, dict(return_interm_indices=[0, 1, 2])),
    "backbone": ({}, dict(backbone="resnet34")),
    "dilation": (dict(backbone="resnet50"), dict(dilation=True)),  # torchvision's BasicBlock has no dilation
    "batch_norm_type": ({}, dict(batch_norm_type="BatchNorm2d")),
    "backbone_freeze_stem": ({}, dict(backbone_freeze_stem=False)),
    "lr_backbone": ({}, dict(lr_backbone=0.0)),
    "nheads": ({}, dict(nheads=2)),
    "enc_n_points": ({}, dict(enc_n_points=2)),
    "dec_n_points": ({}, dict(dec_n_points=2)),
    "transformer_activation": ({}, dict(transformer_activation="gelu")),
    "dropout": ({}, dict(dropout=0.1)),
    "embed_init_tgt": ({}, dict(embed_init_tgt=False)),
    "use_detached_boxes_dec_out": ({}, dict(use_detached_boxes_dec_out=True)),
    "dec_pred_bbox_embed_share": ({}, dict(dec_pred_bbox_embed_share=False)),
    "dec_pred_class_embed_share": ({}, dict(dec_pred_class_embed_share=False)),
    "two_stage_bbox_embed_share": ({}, dict(two_stage_bbox_embed_share=True)),
    "two_stage_class_embed_share": ({}, dict(two_stage_class_embed_share=True)),
    "aux_loss": ({}, dict(aux_loss=False)),
    "use_dn": ({}, dict(use_dn=False)),
    "dn_number": ({}, dict(dn_number=8)),
    "dn_scalar": ({}, dict(dn_scalar=8)),
    "dn_box_noise_scale": ({}, dict(dn_box_noise_scale=1.0)),
    "dn_label_noise_ratio": ({}, dict(dn_label_noise_ratio=0.0)),
    "dn_label_coef": ({}, dict(dn_label_coef=0.5)),
    "dn_bbox_coef": ({}, dict(dn_bbox_coef=0.5)),
    "cls_loss_coef": ({}, dict(cls_loss_coef=2.0)),
    "bbox_loss_coef": ({}, dict(bbox_loss_coef=2.0)),
    "giou_loss_coef": ({}, dict(giou_loss_coef=1.0)),
    "interm_loss_coef": ({}, dict(interm_loss_coef=0.5)),
    "no_interm_box_loss": ({}, dict(no_interm_box_loss=True)),
    "focal_alpha": ({}, dict(focal_alpha=0.5)),
    "set_cost_class": ({}, dict(set_cost_class=0.0)),
    "set_cost_bbox": ({}, dict(set_cost_bbox=0.0)),
    "set_cost_giou": ({}, dict(set_cost_giou=0.0)),
    "num_select": ({}, dict(num_select=5)),
    "nms_iou_threshold": ({}, dict(nms_iou_threshold=0.05)),
    "use_hae": ({}, HAE),
    "num_hae_layers": (HAE, dict(num_hae_layers=2)),
    "hae_dense_level": (HAE, dict(hae_dense_level=0)),
    "hae_dense_level_5scale": (dict(HAE, **FIVE_LEVELS), dict(hae_dense_level=-2)),
    "hae_ffn": (HAE, dict(hae_ffn=True)),
    "use_emca": ({}, EMCA),
    "emca_enc_layers": (EMCA, dict(emca_enc_layers=[0])),
    "emca_shared_value_proj": (EMCA, dict(emca_shared_value_proj=True)),
}


@functools.lru_cache(maxsize=None)
def _fingerprint(switches: str):
    """Training and evaluation measurements (with the configured post-processing) of DINO + switches."""
    overrides = json.loads(switches)
    model, criterion, post = golden.build("dino", **overrides)
    out = {mode: golden.measure(model, criterion, post, mode) for mode in MODES}
    model.eval()
    samples, _ = golden.golden_batch()
    with torch.no_grad():
        results = post["bbox"](model(samples), torch.tensor([[480, 640], [300, 400]]))
    out["configured_postprocess"] = {f"image{i}.{k}": v for i, r in enumerate(results)
                                     for k, v in (("count", float(len(r["scores"]))),
                                                  ("scores_sum", r["scores"].double().sum().item()))}
    return out


@pytest.mark.parametrize("name", list(SWITCHES))
def test_switch_changes_numbers(name):
    base, flip = SWITCHES[name]
    before = _fingerprint(json.dumps(base, sort_keys=True))
    after = _fingerprint(json.dumps(dict(base, **flip), sort_keys=True))
    assert golden.compare(after, before) != [], f"{flip} changed none of the golden quantities"


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit("usage: python tests/models/test_golden.py --regenerate   (rewrites " + GOLDEN_FILE + ")")
    regenerate()
    print(f"wrote {GOLDEN_FILE}")
