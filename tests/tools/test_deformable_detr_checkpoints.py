"""The released Deformable DETR files load (issue 21, items 2 and 4), tried on files in their layout: the state
the official code builds (tests/data/deformable_detr_reference/keys_<variant>.tsv, the fixture's weight rule,
num_queries 100 as the fixture's), saved as the official training script saves it ('module.'-free 'model', an
argparse.Namespace of its flags under 'args'), plus the thop counters some released files carry."""
import argparse
import types

import pytest
import torch

from engine.run import load_weights
from models import build_model, checkpoint_origin
from tools import convert_checkpoint
from tools.common import load_tool_model
from util.checkpoint import CheckpointError, load_checkpoint, load_model_state

from official_rule_weights import fixture_path, read_keys, rule_state
from tiny_configs import config_args

QUERIES = {"num_queries": 100}  # the fixture's (the released files: 300)
OFFICIAL_FLAGS = {"multiscale": {}, "box_refine": {"with_box_refine": True},
                  "two_stage": {"with_box_refine": True, "two_stage": True}, "single_scale": {"num_feature_levels": 1}}


def official_state(variant: str):
    return rule_state(read_keys(fixture_path("deformable_detr_reference", f"keys_{variant}.tsv")))


def save_official(path, variant: str, thop: bool = True) -> str:
    """An official-layout file of `variant` at `path`: the model, thop counters, the official script's args."""
    state = dict(official_state(variant))
    if thop:
        state.update({"total_ops": torch.zeros(1, dtype=torch.float64), "backbone.0.body.conv1.total_params":
                      torch.zeros(1, dtype=torch.float64)})
    flags = dict(dict(with_box_refine=False, two_stage=False, num_feature_levels=4, dilation=False, hidden_dim=256,
                      dim_feedforward=1024, num_queries=100), **OFFICIAL_FLAGS[variant])
    torch.save({"model": state, "args": argparse.Namespace(**flags), "epoch": 49}, path)
    return str(path)


@pytest.mark.parametrize("variant, config", [("multiscale", "deformable_detr.py"),
                                             ("box_refine", "deformable_detr_refine.py"),
                                             ("two_stage", "deformable_detr_two_stage.py"),
                                             ("single_scale", "deformable_detr_single_scale.py")])
def test_each_official_layout_is_recognised_with_its_config(variant, config):
    what, found = checkpoint_origin(official_state(variant), None)
    assert found == f"config/DeformableDETR/{config}" and what.startswith("an official Deformable DETR")


def test_dc5_is_told_by_the_stored_args():
    state = official_state("single_scale")
    dc5 = "config/DeformableDETR/deformable_detr_single_scale_dc5.py"
    assert checkpoint_origin(state, {"dilation": True})[1] == dc5
    assert checkpoint_origin(state, {"config_file": "x.py"}) is None  # this project's own files name their config
    dino, _, _ = build_model(config_args("DINO/DINO_4scale.py", num_queries=100, msda_backend="pytorch"))
    assert checkpoint_origin(dino.state_dict(), None) is None


def test_convert_checkpoint_drops_thop_counters_and_verifies_without_a_config(tmp_path):
    src = save_official(tmp_path / "r50_deformable_detr-checkpoint.pth", "multiscale")
    lines = convert_checkpoint.main([src, str(tmp_path / "out.pth"), "--verify", "--options", "num_queries=100"])
    assert "is an official Deformable DETR (multi-scale) file" in lines[0] and "561 keys" in lines[0]
    assert any("dropped 2 thop profiler counters" in line for line in lines)
    assert "loads with strict=True" in lines[-1] and lines[-1].endswith("config/DeformableDETR/deformable_detr.py")
    out = torch.load(tmp_path / "out.pth", weights_only=True)["model"]
    assert len(out) == 561 and not any(k.endswith(("total_ops", "total_params")) for k in out)


def test_a_file_of_another_variant_is_one_line_naming_its_config(tmp_path):
    src = save_official(tmp_path / "two_stage.pth", "two_stage")
    with pytest.raises(CheckpointError) as err:
        load_tool_model("config/DeformableDETR/deformable_detr.py", src, dict(QUERIES, msda_backend="pytorch"),
                        error_file=str(tmp_path / "err.txt"))
    message = str(err.value)
    assert "\n" not in message and "config/DeformableDETR/deformable_detr_two_stage.py" in message
    assert "an official Deformable DETR ++ two-stage file" in message
    assert message.rstrip(")").split("; ")[-1].startswith("use -c config/DeformableDETR/deformable_detr_two_stage.py")
    # without -c, the tool builds the model of the config the file is recognised as
    args, model, _, origin = load_tool_model(None, src, dict(QUERIES, msda_backend="pytorch"))
    assert args.two_stage and "deformable_detr_two_stage.py" in origin


def test_resume_path_loads_strictly_with_thop_counters(tmp_path):
    """main.py's --resume (engine.run.load_weights, strict): the official file with its thop counters loads, and
    the weights are the file's (the six aliased class heads are one module)."""
    src = save_official(tmp_path / "refine.pth", "box_refine")
    args = config_args("DeformableDETR/deformable_detr_refine.py", msda_backend="pytorch", **QUERIES)
    args.config_keys, args.config_file = list(vars(args)), "config/DeformableDETR/deformable_detr_refine.py"
    args.config_origin = {"source": "file", "options": {}, "flags": {}}  # as engine/cli.py records it
    model, _, _ = build_model(args)
    run = types.SimpleNamespace(args=args, model_without_ddp=model)
    load_weights(run, load_checkpoint(src), src, strict=True)
    expected = official_state("box_refine")
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    # a two-stage file there: one line naming its config and the official flags that differ
    other = save_official(tmp_path / "two_stage.pth", "two_stage")
    with pytest.raises(CheckpointError) as err:
        load_weights(run, load_checkpoint(other), other, strict=True)
    message = str(err.value)
    assert "\n" not in message and "two_stage=True (now False)" in message
    assert "this run's model comes from config/" in message
    assert "use -c config/DeformableDETR/deformable_detr_two_stage.py" in message


def test_official_multiscale_file_loads_into_the_augdetr_variant_with_only_new_parameters_missing():
    """--pretrain_model_path r50_deformable_detr-checkpoint.pth with deformable_detr_augdetr.py: nothing unexpected,
    only HAE's and EMCA's new tensors missing."""
    model, _, _ = build_model(config_args("DeformableDETR/deformable_detr_augdetr.py", msda_backend="pytorch",
                                          **QUERIES))
    result = load_model_state(model, official_state("multiscale"), strict=False)
    assert result.unexpected_keys == []
    new = ("dense_attn", "dense_norm", "mix_weights", "extra_value_proj")
    assert result.missing_keys and all(any(n in k for n in new) for k in result.missing_keys)
