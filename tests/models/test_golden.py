"""Golden numerics of every golden case (golden.CASES), their conditioning, and one test per config switch.

The reference values (tests/data/golden/<case>.json) were generated from the code as it was when they
were committed, with name-keyed weights and fixed inputs (tests/models/golden.py says exactly how).
Regenerate them only after a deliberate change of the numbers, and say why in the commit:

    python tests/models/test_golden.py --regenerate [CASE ...]

test_case_is_well_conditioned checks that last-bit noise (what another CPU does) cannot move a case;
test_tolerance_* show what the comparison can see: a 1e-3 relative change of the output of any single
layer fails it, last-bit noise passes. test_switch_changes_numbers flips each config key that should
change the numbers and checks that they do change (a key that is read nowhere fails it), and
test_every_detector_and_model_key_is_covered makes every registered detector and every model key have
their tiny config, golden case and switch test.
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

from engine.config import schema_for  # noqa: E402

import golden  # noqa: E402
from golden import CASES, MODES, OutputNoise  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN_DIR = os.path.join(ROOT, "tests", "data", "golden")


def measure(case: str, mode: str, **overrides):
    return golden.measure(*golden.build(case, **overrides), mode)


def golden_file(case: str) -> str:
    return os.path.join(GOLDEN_DIR, f"{case}.json")


def regenerate(cases) -> None:
    """Write the reference values of `cases` (both modes), each to its own file."""
    os.makedirs(GOLDEN_DIR, exist_ok=True)
    for case in cases:
        values = {m: golden.rounded(measure(case, m)) for m in MODES}
        values["_how"] = (f"python tests/models/test_golden.py --regenerate {case} (tests/models/golden.py); "
                          f"torch {torch.__version__}")
        text = json.dumps(values, indent=1, sort_keys=True)
        # lists on one line
        text = re.sub(r"\[\s+([^\[\]]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
        with open(golden_file(case), "w") as f:
            f.write(text + "\n")


@functools.lru_cache(maxsize=None)
def reference(case: str):
    with open(golden_file(case)) as f:
        return json.load(f)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_golden_values(case, mode):
    diffs = golden.compare(measure(case, mode), reference(case)[mode])
    assert diffs == [], f"{len(diffs)} values differ, e.g.\n" + "\n".join(diffs[:12])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(CASES))
def test_case_is_well_conditioned(case, mode):
    """Noise standing for another CPU's last bits (CONDITION_NOISE of the mode's precision, on every layer at
    once, two draws) moves no measured value by a third of the tolerance."""
    rel = golden.CONDITION_NOISE[golden.DTYPES[mode]]
    assert golden.max_deviation_under_noise(case, mode, rel, seeds=(1, 2)) < golden.RTOL / 3


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
def test_tolerance_passes_last_bit_noise_on_every_layer_at_once(mode):
    model, criterion, post = golden.build("augdetr")
    base = golden.measure(model, criterion, post, mode)
    names = OutputNoise.called(model, lambda: golden.measure(model, criterion, post, mode))
    OutputNoise.apply(model, names, golden.CONDITION_NOISE[golden.DTYPES[mode]])
    assert golden.compare(golden.measure(model, criterion, post, mode), base) == []


HAE = dict(use_hae=True, num_hae_layers=1)
EMCA = dict(use_emca=True)
FIVE_LEVELS = dict(num_feature_levels=5, return_interm_indices=[0, 1, 2, 3])
# name -> (detector, base switches, flipped switches): the flip must change some golden quantity. The
# name is the config key flipped (a suffix after the key names a second test of it).
SWITCHES = {
    "pe_temperatureH": ("dino", {}, dict(pe_temperatureH=10)),
    "pe_temperatureW": ("dino", {}, dict(pe_temperatureW=10)),
    "num_feature_levels": ("dino", {}, FIVE_LEVELS),
    "return_interm_indices": ("dino", {}, dict(return_interm_indices=[0, 1, 2])),
    "backbone": ("dino", {}, dict(backbone="resnet34")),
    "dilation": ("dino", dict(backbone="resnet50"), dict(dilation=True)),  # torchvision's BasicBlock has no dilation
    "batch_norm_type": ("dino", {}, dict(batch_norm_type="BatchNorm2d")),
    "backbone_freeze_stem": ("dino", {}, dict(backbone_freeze_stem=False)),
    "lr_backbone": ("dino", {}, dict(lr_backbone=0.0)),
    "num_classes": ("dino", {}, dict(num_classes=8)),
    "hidden_dim": ("dino", {}, dict(hidden_dim=64)),
    "dim_feedforward": ("dino", {}, dict(dim_feedforward=32)),
    "enc_layers": ("dino", {}, dict(enc_layers=1)),
    "dec_layers": ("dino", {}, dict(dec_layers=3)),
    "num_queries": ("dino", {}, dict(num_queries=8, num_select=8)),
    "nheads": ("dino", {}, dict(nheads=2)),
    "enc_n_points": ("dino", {}, dict(enc_n_points=2)),
    "dec_n_points": ("dino", {}, dict(dec_n_points=2)),
    "transformer_activation": ("dino", {}, dict(transformer_activation="gelu")),
    "dropout": ("dino", {}, dict(dropout=0.1)),
    "embed_init_tgt": ("dino", {}, dict(embed_init_tgt=False)),
    "use_detached_boxes_dec_out": ("dino", {}, dict(use_detached_boxes_dec_out=True)),
    "dec_pred_bbox_embed_share": ("dino", {}, dict(dec_pred_bbox_embed_share=False)),
    "dec_pred_class_embed_share": ("dino", {}, dict(dec_pred_class_embed_share=False)),
    "two_stage_bbox_embed_share": ("dino", {}, dict(two_stage_bbox_embed_share=True)),
    "two_stage_class_embed_share": ("dino", {}, dict(two_stage_class_embed_share=True)),
    "aux_loss": ("dino", {}, dict(aux_loss=False)),
    "use_dn": ("dino", {}, dict(use_dn=False)),
    "dn_number": ("dino", {}, dict(dn_number=8)),
    "dn_scalar": ("dino", {}, dict(dn_scalar=8)),
    "dn_box_noise_scale": ("dino", {}, dict(dn_box_noise_scale=1.0)),
    "dn_label_noise_ratio": ("dino", {}, dict(dn_label_noise_ratio=0.0)),
    "dn_labelbook_size": ("dino", {}, dict(dn_labelbook_size=9)),
    "dn_label_coef": ("dino", {}, dict(dn_label_coef=0.5)),
    "dn_bbox_coef": ("dino", {}, dict(dn_bbox_coef=0.5)),
    "cls_loss_coef": ("dino", {}, dict(cls_loss_coef=2.0)),
    "bbox_loss_coef": ("dino", {}, dict(bbox_loss_coef=2.0)),
    "giou_loss_coef": ("dino", {}, dict(giou_loss_coef=1.0)),
    "interm_loss_coef": ("dino", {}, dict(interm_loss_coef=0.5)),
    "no_interm_box_loss": ("dino", {}, dict(no_interm_box_loss=True)),
    "focal_alpha": ("dino", {}, dict(focal_alpha=0.5)),
    "set_cost_class": ("dino", {}, dict(set_cost_class=0.0)),
    "set_cost_bbox": ("dino", {}, dict(set_cost_bbox=0.0)),
    "set_cost_giou": ("dino", {}, dict(set_cost_giou=0.0)),
    "num_select": ("dino", {}, dict(num_select=5)),
    "nms_iou_threshold": ("dino", {}, dict(nms_iou_threshold=0.05)),
    "use_hae": ("dino", {}, HAE),
    "num_hae_layers": ("dino", HAE, dict(num_hae_layers=2)),
    "hae_dense_level": ("dino", HAE, dict(hae_dense_level=0)),
    "hae_dense_level_5scale": ("dino", dict(HAE, **FIVE_LEVELS), dict(hae_dense_level=-2)),
    "hae_ffn": ("dino", HAE, dict(hae_ffn=True)),
    "use_emca": ("dino", {}, EMCA),
    "emca_enc_layers": ("dino", EMCA, dict(emca_enc_layers=[0])),
    "emca_shared_value_proj": ("dino", EMCA, dict(emca_shared_value_proj=True)),
    "emca_gate_input": ("dino", EMCA, dict(emca_gate_input="content")),
    "emca_output_proj": ("dino", EMCA, dict(emca_output_proj="per_layer")),
    "criterion_type": ("dino", {}, dict(criterion_type="aligndetr", o2m_k=[2, 2, 1])),
    "o2m_k": ("dino", dict(criterion_type="aligndetr", o2m_k=[2, 2, 1]), dict(o2m_k=[1, 3, 1])),
    "aligndetr_alpha": ("dino", dict(criterion_type="aligndetr", o2m_k=[2, 2, 1]), dict(aligndetr_alpha=0.5)),
    "aligndetr_gamma": ("dino", dict(criterion_type="aligndetr", o2m_k=[2, 2, 1]), dict(aligndetr_gamma=1.0)),
    "aligndetr_tau": ("dino", dict(criterion_type="aligndetr", o2m_k=[2, 2, 1]), dict(aligndetr_tau=0.5)),
    # DETR: the common model keys on its own model, its keys, and what its own code reads (aux outputs, the
    # softmax matcher's class cost, the softmax post-processor's selection)
    "num_classes_detr": ("detr", {}, dict(num_classes=8)),
    "backbone_detr": ("detr", {}, dict(backbone="resnet34")),
    "batch_norm_type_detr": ("detr", {}, dict(batch_norm_type="BatchNorm2d")),
    "dilation_detr": ("detr", dict(backbone="resnet50"), dict(dilation=True)),
    "return_interm_indices_detr": ("detr", {}, dict(return_interm_indices=[2])),
    "pe_temperatureH_detr": ("detr", {}, dict(pe_temperatureH=20)),
    "pe_temperatureW_detr": ("detr", {}, dict(pe_temperatureW=20)),
    "pe_offset_detr": ("detr", {}, dict(pe_offset=-0.5)),
    "enc_layers_detr": ("detr", {}, dict(enc_layers=1)),
    "dec_layers_detr": ("detr", {}, dict(dec_layers=3)),
    "dim_feedforward_detr": ("detr", {}, dict(dim_feedforward=32)),
    "hidden_dim_detr": ("detr", {}, dict(hidden_dim=64)),
    "nheads_detr": ("detr", {}, dict(nheads=2)),
    "num_queries_detr": ("detr", {}, dict(num_queries=8, num_select=8)),
    "transformer_activation_detr": ("detr", {}, dict(transformer_activation="gelu")),
    "pre_norm": ("detr", {}, dict(pre_norm=True)),
    "eos_coef": ("detr", {}, dict(eos_coef=0.5)),
    "aux_loss_detr": ("detr", {}, dict(aux_loss=False)),
    "set_cost_class_detr": ("detr", {}, dict(set_cost_class=0.0)),
    "num_select_detr": ("detr", {}, dict(num_select=5)),
    "pe_offset": ("dino", {}, dict(pe_offset=-0.5)),
    # Deformable DETR's own keys
    "with_box_refine": ("deformable_detr", {}, dict(with_box_refine=True)),
    "two_stage": ("deformable_detr", dict(with_box_refine=True), dict(two_stage=True)),
    "pe_offset_deformable_detr": ("deformable_detr", {}, dict(pe_offset=0.0)),
    "cls_loss_coef_deformable_detr": ("deformable_detr", {}, dict(cls_loss_coef=1.0)),  # DINO's flip is its default
    "use_emca_two_stage": ("deformable_detr", dict(with_box_refine=True, two_stage=True), EMCA),
}
# DDQ-DETR: DINO's flips of the keys that change its tensors (DINO's model keys but embed_init_tgt) and of
# use_dn and aux_loss (they change its query layout and which sets get a query mask), from the golden case's
# NMS thresholds (at which the tiny model's boxes overlap); then its own model keys. Its loss keys are
# checked in test_ddq_detr.py.
DDQ = golden.CASES["ddq"].switches
DDQ_SHARED = set(schema_for("ddq_detr").model_keys()) | {"use_dn", "aux_loss"}
SWITCHES.update({f"{name}_ddq": ("ddq_detr", dict(DDQ, **base), flip) for name, (detector, base, flip)
                 in list(SWITCHES.items()) if detector == "dino" and name.split("_5scale")[0] in DDQ_SHARED})
SWITCHES.update({
    "ddq_enc_nms_iou": ("ddq_detr", DDQ, dict(ddq_enc_nms_iou=0.8)),
    "ddq_dec_nms_iou": ("ddq_detr", DDQ, dict(ddq_dec_nms_iou=0.8)),
    "ddq_distinct_set": ("ddq_detr", DDQ, dict(ddq_distinct_set="tracked")),
    "ddq_dense_ratio": ("ddq_detr", DDQ, dict(ddq_dense_ratio=0.5)),
    "ddq_dense_ratio_none": ("ddq_detr", DDQ, dict(ddq_dense_ratio=0.0)),
})


def _shared_switches(detector: str):
    """DINO's switches of the model keys (Key.model) `detector` has too, on its tiny model (name: DINO's + '_' +
    detector); loss and post-processing keys are the shared criterion's, switched on DINO (each switch here
    costs a training measurement)."""
    from engine.config import schema_for
    schema = schema_for(detector)
    keys, model_keys = set(schema.keys), set(schema.model_keys())
    return {f"{name}_{detector}": (detector, base, flip) for name, (owner, base, flip) in list(SWITCHES.items())
            if owner == "dino" and set(base) | set(flip) <= keys and set(flip) & model_keys
            and f"{name}_{detector}" not in SWITCHES}


SWITCHES.update(_shared_switches("deformable_detr"))


@functools.lru_cache(maxsize=None)
def _fingerprint(detector: str, switches: str):
    """Training and evaluation measurements (with the configured post-processing) of a detector's tiny
    model + switches."""
    overrides = json.loads(switches)
    from models import build_model

    from name_keyed_weights import init_by_name
    from tiny_configs import tiny_args
    model, criterion, post = build_model(tiny_args(detector, **overrides))
    model = init_by_name(model)
    out = {mode: golden.measure(model, criterion, post, mode) for mode in MODES}
    model.eval()
    samples, _ = golden.golden_batch()
    with torch.no_grad():
        results = post["bbox"](model(samples), torch.tensor([[480, 640], [300, 400]]))
    out["configured_postprocess"] = {f"image{i}.{k}": v for i, r in enumerate(results)
                                     for k, v in (("count", float(len(r["scores"]))),
                                                  ("scores_sum", r["scores"].double().sum().item()))}
    # a key may change only tensors the measured pass does not read (rows of an embedding table)
    out["parameter_sizes"] = {name: float(t.numel()) for name, t in model.state_dict().items()}
    return out


@pytest.mark.parametrize("name", list(SWITCHES))
def test_switch_changes_numbers(name):
    detector, base, flip = SWITCHES[name]
    before = _fingerprint(detector, json.dumps(base, sort_keys=True))
    after = _fingerprint(detector, json.dumps(dict(base, **flip), sort_keys=True))
    assert golden.compare(after, before) != [], f"{flip} changed none of the golden quantities"


def test_every_detector_and_model_key_is_covered():
    """Each registered detector has a tiny config (tests/tiny_configs.py), a golden case and a switch test;
    each key that changes a detector's tensors (Key.model) has a switch test; each golden case has its
    file. modelname itself is covered by each detector's golden case."""
    from models import DETECTORS

    from tiny_configs import TINY_MODELS
    problems = []
    for name in DETECTORS:
        if name not in TINY_MODELS:
            problems.append(f"detector {name}: no tiny config in tests/tiny_configs.py TINY_MODELS")
        if not any(case.detector == name for case in CASES.values()):
            problems.append(f"detector {name}: no golden case in tests/models/golden.py CASES")
        if not any(detector == name for detector, _, _ in SWITCHES.values()):
            problems.append(f"detector {name}: no switch test in SWITCHES")
        switched = {key for key, (detector, _, _) in SWITCHES.items() if detector == name}
        for key in schema_for(name).model_keys():
            if key != "modelname" and not any(s == key or s.startswith(key + "_") for s in switched):
                problems.append(f"detector {name}: model key {key} has no switch test in SWITCHES")
    problems += [f"golden case {c}: no file {golden_file(c)}" for c in CASES if not os.path.isfile(golden_file(c))]
    assert problems == []


if __name__ == "__main__":
    if sys.argv[1:2] != ["--regenerate"] or any(c not in CASES for c in sys.argv[2:]):
        sys.exit(f"usage: python tests/models/test_golden.py --regenerate [CASE ...]   (CASE: {', '.join(CASES)}; "
                 f"rewrites {GOLDEN_DIR}/CASE.json, all cases when none is named)")
    regenerate(sys.argv[2:] or list(CASES))
    print(f"wrote {', '.join(sys.argv[2:] or CASES)} under {GOLDEN_DIR}")
