"""The earlier AugDETR reproduction's checkpoints (models/dino/augdetr/repro.py): converted and built with the
config that reproduces them, they give the reproduction's own outputs (tests/data/augdetr_repro, made by
running its code) for its four variants. On the tiny model: its EMCA options against a reference loop,
each option changing the outputs, the conversion's checks and its per-layer value projections."""
import argparse
import functools
import hashlib
import json
import math
import os
import zlib

import pytest
import torch
import torchvision.transforms.functional as TF
from test_augdetr import HEADS, D, emca_inputs

import models
from engine.config import resolve_stored
from models.dino.augdetr.emca import EncoderMixingAttention
from models.dino.augdetr.repro import reproduction_layout
from util.misc import nested_tensor_from_tensor_list

from emca_reference import paper_loop, reproduction_loop
from name_keyed_weights import init_by_name
from tiny_configs import tiny_args, tiny_batch

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "augdetr_repro")
VARIANTS = ("dino", "hae", "emca", "hae_emca")
SALT = "fixture-v1"
TOLERANCE = 1e-4  # the fixture README expects ~1e-6 relative from another thread count or kernel


def rule_tensor(key: str, shape) -> torch.Tensor:
    """The fixture's weight rule (its README): a generator seeded with crc32(salt + key), the branch by
    the tensor's rank and the key's ending."""
    g = torch.Generator().manual_seed(zlib.crc32((SALT + key).encode()))
    if len(shape) >= 2:
        return torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
    if key.endswith("running_var"):
        return 1 + 0.1 * torch.rand(shape, generator=g)
    if key.endswith("running_mean"):
        return 0.1 * torch.randn(shape, generator=g)
    if key.endswith("weight"):
        return 1 + 0.1 * torch.randn(shape, generator=g)
    return 0.1 * torch.randn(shape, generator=g)


def key_table(variant: str):
    """(key, shape, the key whose value it takes, sha256) rows of <variant>/keys.tsv."""
    rows = []
    with open(os.path.join(DATA, variant, "keys.tsv")) as f:
        for line in f:
            if line.startswith("#"):
                continue
            key, shape, _dtype, _rule, tied_to, _sum, sha = line.rstrip("\n").split("\t")
            rows.append((key, tuple(int(s) for s in shape.split(",")), tied_to or key, sha))
    return rows


@functools.lru_cache(maxsize=None)
def _value(key: str, shape) -> torch.Tensor:
    return rule_tensor(key, shape)


def reproduction_state(variant: str):
    """The reproduction's model state of `variant` with the rule's weights (keys in its layout)."""
    return {key: _value(source, shape) for key, shape, source, _ in key_table(variant)}


def stored_args(variant: str):
    with open(os.path.join(DATA, variant, "options.json")) as f:
        return json.load(f)["args"]


@functools.lru_cache(maxsize=None)
def fixture_samples():
    """The fixture's two images drawn again from its seed, normalised and padded as DINO does."""
    with open(os.path.join(DATA, "inputs.json")) as f:
        spec = json.load(f)
    g = torch.Generator().manual_seed(spec["input_seed"])
    images = [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for h, w in spec["image_sizes"]]
    samples = nested_tensor_from_tensor_list(
        [TF.normalize(img.to(torch.float32).div(255), spec["mean"], spec["std"]) for img in images])
    assert hashlib.sha256(samples.tensors.numpy().tobytes()).hexdigest() == spec["samples_tensor_sha256"]
    return samples


def reproducing_args(variant: str, **overrides) -> argparse.Namespace:
    """The config that reproduces the variant's checkpoint (from its stored args and tensors), with the
    pure-PyTorch deformable attention (the fixture's) and `overrides`."""
    config = models.checkpoint_config(stored_args(variant), reproduction_state(variant))
    config = resolve_stored(dict(config, backbone_weights=None, msda_backend="pytorch", **overrides), variant)
    models.apply_runtime_config(argparse.Namespace(**config))
    return argparse.Namespace(**config)


def run_converted(variant: str, **overrides):
    """Eval outputs of the converted checkpoint, flattened as the fixture's `eval_flat`, plus the EMCA gates
    and HAE dense-branch outputs under the fixture's `debug.` names."""
    args = reproducing_args(variant, **overrides)
    model = models.build_model(args)[0]
    state, _ = models.convert_state(reproduction_state(variant), args)
    model.load_state_dict(state, strict=True)
    model.eval()
    debug, hooks = {}, []
    for i, layer in enumerate(model.transformer.encoder.layers):
        if hasattr(layer, "dense_branch") and layer.dense_ffn:
            hooks.append(layer.dense_norm2.register_forward_hook(
                lambda _m, _i, out, i=i: debug.__setitem__(f"debug.hae_dense_out.{i}", out)))
    emca = [layer.cross_attn for layer in model.transformer.decoder.layers if hasattr(layer.cross_attn, "gates")]
    for m in emca:
        m.record_mix_weights = True
    with torch.no_grad():
        out = model(fixture_samples())
    for h in hooks:
        h.remove()
    flat = {"pred_logits": out["pred_logits"], "pred_boxes": out["pred_boxes"]}
    for i, aux in enumerate(out["aux_outputs"]):
        flat.update({f"aux_outputs.{i}.{k}": v for k, v in aux.items()})
    flat.update({f"interm_outputs.{k}": v for k, v in out["interm_outputs"].items()})
    flat.update({f"debug.emca_gates.{j}": m.last_mix_weights for j, m in enumerate(emca)})
    return dict(flat, **debug)


def expected(variant: str):
    return torch.load(os.path.join(DATA, variant, "expected.pth"), weights_only=True)


def largest_difference(variant: str, **overrides):
    """(max |converted - reproduction| over every compared tensor, the tensor names compared)."""
    ours, ref = run_converted(variant, **overrides), expected(variant)
    names = [k for k in ref if not k.startswith(("debug.enc_token", "debug.topk"))]
    missing = [k for k in names if k not in ours]
    assert missing == [], f"not produced: {missing}"
    return max((ours[k] - ref[k]).abs().max().item() for k in names), names


def test_rule_gives_the_fixture_weights():
    """Every tensor of the largest variant (all keys of the others too) has the fixture's sha256."""
    state = reproduction_state("hae_emca")
    wrong = [key for key, _, _, sha in key_table("hae_emca")
             if hashlib.sha256(state[key].numpy().tobytes()).hexdigest() != sha]
    assert wrong == [] and len(state) == 542


@pytest.mark.parametrize("variant", VARIANTS)
def test_converted_checkpoint_gives_the_reproductions_outputs(variant):
    diff, names = largest_difference(variant)
    assert diff < TOLERANCE, f"{variant}: largest difference {diff:.3g}"
    # what was compared: every eval tensor, and each variant's own parts
    assert len([n for n in names if not n.startswith("debug.")]) == 8
    assert sum(n.startswith("debug.emca_gates") for n in names) == (3 if "emca" in variant else 0)
    assert sum(n.startswith("debug.hae_dense_out") for n in names) == (2 if "hae" in variant else 0)


def test_plain_dino_checkpoint_needs_no_conversion():
    state = reproduction_state("dino")
    converted, lines = models.convert_state(dict(state))
    assert lines == [] and converted.keys() == state.keys()
    config = models.checkpoint_config(stored_args("dino"), state)
    assert config["use_hae"] is False and config["use_emca"] is False


# the tiny model with the reproduction's choices (tests/tiny_configs.py sizes: 2 encoder layers, so EMCA mixes 2)
REPRO_TINY = dict(use_hae=True, num_hae_layers=1, hae_ffn=True, use_emca=True, emca_shared_value_proj=True,
                  emca_gate_input="content", emca_output_proj="per_layer")
# this project's name -> the reproduction's (the inverse of the conversion, written out for the tests)
TO_REPRODUCTION = {".dense_attn.": ".std_self_attn.", ".dense_norm.": ".norm_std.", ".dense_linear1.": ".linear1_std.",
                   ".dense_linear2.": ".linear2_std.", ".dense_norm2.": ".norm2_std.",
                   ".cross_attn.mix_weights.": ".encoder_mixing_weights."}


def in_reproduction_layout(state):
    out = {}
    for key, value in state.items():
        for ours, theirs in TO_REPRODUCTION.items():
            key = key.replace(ours, theirs)
        out[key] = value
    return out


def reproduction_module(**kw):
    torch.manual_seed(0)
    m = EncoderMixingAttention(D, 4, HEADS, 2, num_mixed=3, shared_value_proj=True, **kw)
    with torch.no_grad():  # gates that differ per layer and query, a bias that shows
        m.mix_weights.weight.normal_(0, 0.3)
        m.output_proj.bias.normal_(0, 1.0)
    return m


def test_reproduction_emca_equals_its_loop_in_outputs_and_gradients():
    m = reproduction_module(gate_input="content", output_proj="per_layer")
    inputs = emca_inputs()
    content = torch.randn(inputs[0].shape, requires_grad=True)
    fused = m(*inputs, content=content)
    naive = reproduction_loop(m, *inputs, content)
    wrt = [inputs[0], inputs[2], content] + list(m.parameters())
    assert torch.allclose(fused, naive, atol=1e-5)
    for a, b in zip(torch.autograd.grad(fused.square().sum(), wrt), torch.autograd.grad(naive.square().sum(), wrt)):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_each_reproduction_option_changes_the_output():
    inputs = emca_inputs()
    content = torch.randn(inputs[0].shape)
    default = reproduction_module()(*inputs)
    assert torch.allclose(default, paper_loop(reproduction_module(), *inputs), atol=1e-5)
    gate_content = reproduction_module(gate_input="content")(*inputs, content=content)
    per_layer = reproduction_module(output_proj="per_layer")(*inputs)
    assert (gate_content - default).abs().max() > 1e-2
    # per layer: the output bias once per unit of gate sum
    m = reproduction_module()
    gate_sum = m.gates(inputs[0]).sum(-1, keepdim=True)
    assert torch.allclose(per_layer - default, (gate_sum - 1) * m.output_proj.bias, atol=1e-5)
    assert (per_layer - default).abs().max() > 1e-2


def test_content_gates_without_the_content_query_are_refused():
    with pytest.raises(ValueError, match="needs the content query"):
        reproduction_module(gate_input="content")(*emca_inputs())
    with pytest.raises(ValueError, match="gate_init='zero'"):
        EncoderMixingAttention(D, 4, HEADS, 2, num_mixed=3, gate_init="zero")


def test_gate_initialisation():
    """'mean': every gate 1/K; 'xavier' (the reproduction's): Xavier weight and torch's default bias (both
    bounds checked), so the gates spread around 0.5; with the transformer's own initialisation first."""
    query = torch.randn(4, 100, D)
    for gate_init in ("mean", "xavier"):
        model = models.build_model(tiny_args(use_emca=True, emca_enc_layers=[0, 1, 1], emca_gate_init=gate_init))[0]
        layer = model.transformer.decoder.layers[0].cross_attn
        gates, weight, bias = layer.gates(query), layer.mix_weights.weight, layer.mix_weights.bias
        if gate_init == "mean":
            assert torch.allclose(gates, torch.full_like(gates, 1 / 3)) and not weight.any()
            continue
        assert abs(gates.mean() - 0.5) < 0.1 and gates.std() > 0.1
        w_bound, b_bound = (6 / (D + 3)) ** 0.5, D ** -0.5
        assert weight.abs().max() <= w_bound and weight.std() > w_bound / 3
        assert bias.abs().max() <= b_bound and bias.abs().max() > 0


def tiny_reproduction(**overrides):
    """A tiny model with the reproduction's choices and name-keyed weights, and its state in the
    reproduction's layout."""
    model = init_by_name(models.build_model(tiny_args(**dict(REPRO_TINY, **overrides)))[0]).eval()
    return model, in_reproduction_layout(model.state_dict())


def eval_logits(model):
    with torch.no_grad():
        return model.eval()(tiny_batch()[0])["pred_logits"]


def test_conversion_tells_the_options_and_where_the_config_differs():
    model, state = tiny_reproduction()
    converted, lines = models.convert_state(state, tiny_args(**REPRO_TINY))
    assert converted.keys() == model.state_dict().keys() and len(lines) == 1
    assert "HAE in encoder layers 0..0 (with its own FFN), EMCA in 2 decoder layers mixing 2" in lines[0]
    assert "emca_gate_input=content emca_output_proj=per_layer" in lines[0]
    _, lines = models.convert_state(state, tiny_args(**dict(REPRO_TINY, emca_gate_input="content_pos")))
    assert lines[-1].startswith("this config differs from the reproduction in emca_gate_input=content_pos")


def test_per_layer_value_projections_start_from_the_shared_one():
    """Loaded into this project's default EMCA (a value projection per encoder layer), a reproduction
    checkpoint gives the same outputs: each decoder layer's shared projection is repeated."""
    model, state = tiny_reproduction()
    target = models.build_model(tiny_args(**dict(REPRO_TINY, emca_shared_value_proj=False)))[0]
    converted, lines = models.convert_state(state, tiny_args(**dict(REPRO_TINY, emca_shared_value_proj=False)))
    target.load_state_dict(converted, strict=True)
    assert "4 per-encoder-layer value projections made" in lines[1]
    assert torch.allclose(eval_logits(target), eval_logits(model), atol=1e-5)


def test_layouts_the_conversion_refuses_or_reads():
    _, state = tiny_reproduction()
    moved = {k.replace("encoder.layers.0.", "encoder.layers.1."): v for k, v in state.items()
             if "encoder.layers.1." not in k}
    with pytest.raises(ValueError, match=r"at encoder layers \[1\]"):
        reproduction_layout(moved)
    without_ffn = {k: v for k, v in state.items() if not any(f"{n}_std." in k for n in ("linear1", "linear2", "norm2"))}
    assert reproduction_layout(without_ffn).hae_ffn is False  # its first commits' layout: attention and norm only
    assert reproduction_layout(tiny_reproduction()[0].state_dict()) is None  # this project's own layout


def test_stored_args_must_agree_with_the_tensors():
    _, state = tiny_reproduction()
    args = dict(enc_layers=2, use_hae=True, num_hybrid_layers=1, use_emca=True)
    assert models.checkpoint_config(args, state)["emca_gate_input"] == "content"
    assert models.checkpoint_config({"enc_layers": 2}, state) is None  # not the reproduction's args
    for wrong, match in ((dict(use_emca=False), "use_emca=False but its tensors hold"),
                         (dict(num_hybrid_layers=2), "num_hybrid_layers=2 but its tensors hold 1"),
                         (dict(enc_layers=6), "mix 2 encoder layers but its args say enc_layers=6")):
        with pytest.raises(ValueError, match=match):
            models.checkpoint_config(dict(args, **wrong), state)
