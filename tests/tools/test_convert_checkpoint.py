"""tools/convert_checkpoint.py and models/common/backbones/official_dino.convert_official_state."""
import os

import pytest
import torch

from models.common.backbones.official_dino import convert_official_state
from models.common.backbones.timm_backbone import TimmBackbone
from tools import convert_checkpoint
from tools.common import ToolError
from util.checkpoint import load_checkpoint, load_model_state

from tiny_configs import MODEL, RUN, options, tiny_args, tiny_batch

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "dino_swin_tiny")


def read_keys(name):
    """{key: shape} of one of the fixture's official key lists (tab-separated key, shape; '#' comments)."""
    out = {}
    with open(os.path.join(DATA, name)) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                key, shape = line.rstrip("\n").split("\t")
                out[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return out


@pytest.mark.parametrize("name, backbone, levels", [
    ("swin_L_384_22k_4scale_backbone_keys.tsv", "swin_L_384_22k", [1, 2, 3]),
    ("swin_L_384_22k_5scale_backbone_keys.tsv", "swin_L_384_22k", [0, 1, 2, 3]),
    ("swin_T_224_1k_4scale_backbone_keys.tsv", "swin_T_224_1k", [1, 2, 3]),
])
def test_full_official_key_lists_convert_to_the_model_keys(name, backbone, levels):
    """Keys and shapes only (meta tensors): every official key maps onto exactly the model's keys."""
    official = {k: torch.empty(s, device="meta") for k, s in read_keys(name).items()}
    converted, lines = convert_official_state(official)
    model = TimmBackbone(backbone, levels, device="meta").state_dict()
    expected = {"backbone.0." + k: tuple(v.shape) for k, v in model.items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected
    n_index = sum(k.endswith("relative_position_index") for k in official)
    assert n_index == (24 if "swin_L" in name else 12)
    assert f"{len(levels)} output norms kept" in lines[0] and f"{n_index} dropped" in lines[0]




def test_converted_fixture_checkpoint_loads_strictly(tmp_path, tiny_swin_spec):
    """An official-layout DINO checkpoint (the fixture's backbone keys + the rest of a tiny DINO) -> the
    tool's OUT loads with strict=True, and the backbone then gives DINO's outputs."""
    from models import build_model
    torch.manual_seed(0)
    args = tiny_args(backbone="swin_T_224_1k", return_interm_indices=[0, 1, 2, 3], num_feature_levels=4)
    model, _, _ = build_model(args)
    fixture = torch.load(os.path.join(DATA, "swin_tiny_fixture.pth"), weights_only=True)
    official = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.0.")}
    official.update(fixture["state_dict"])
    torch.save({"model": {"module." + k: v for k, v in official.items()}, "epoch": 11}, tmp_path / "official.pth")
    lines = convert_checkpoint.main([str(tmp_path / "official.pth"), str(tmp_path / "out.pth")])
    assert lines[0].startswith("official DINO swin backbone: 117 tensors renamed") and "8 dropped" in lines[0]
    out = load_checkpoint(str(tmp_path / "out.pth"))
    assert "optimizer" not in out and out["converted_from"].endswith("official.pth")
    load_model_state(model, out["model"], source="out.pth", strict=True)
    opts = options(MODEL, backbone="swin_T_224_1k", return_interm_indices=[0, 1, 2, 3], num_feature_levels=4,
                   backbone_weights="none")
    lines = convert_checkpoint.main([str(tmp_path / "official.pth"), str(tmp_path / "out2.pth"), "-c",
                                     "config/DINO/DINO_4scale.py", "--verify", "--options", *opts])
    assert lines[-1] == (f"verified: {tmp_path / 'out2.pth'} loads with strict=True into the model of "
                         f"config/DINO/DINO_4scale.py")
    model.eval()
    case = fixture["cases"][1]
    with torch.no_grad():
        for ours, dino in zip(model.backbone[0].features(case["input"]), case["outputs"]):
            torch.testing.assert_close(ours, dino, atol=1e-5, rtol=0)


def test_resnet_checkpoint_is_written_unchanged(tmp_path):
    state = {"backbone.0.body.conv1.weight": torch.randn(4, 3, 7, 7), "transformer.level_embed": torch.randn(4, 8)}
    torch.save({"model": state}, tmp_path / "r50.pth")
    lines = convert_checkpoint.main([str(tmp_path / "r50.pth"), str(tmp_path / "out.pth")])
    assert "is not an official DINO Swin/ConvNeXt checkpoint" in lines[0] and "written unchanged" in lines[0]
    out = load_checkpoint(str(tmp_path / "out.pth"))["model"]
    assert out.keys() == state.keys() and all(torch.equal(out[k], state[k]) for k in state)


def test_convnext_official_keys_map_through_timms_filter():
    """DINO's ConvNeXt names (downsample_layers, stages.i.j, dwconv/pwconv, the patch_embed alias, norm0..3)
    -> timm's; the norms of stages not returned are dropped; without the config it is a one-line error."""
    levels = [1, 2, 3]
    ours = TimmBackbone("convnext_tiny_1k", levels, device="meta").state_dict()
    official = {}
    for k, v in ours.items():
        k = k.replace("body.stem.", "downsample_layers.0.").replace("body.", "")
        k = k.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv").replace(".blocks.", ".")
        k = k.replace("stages.1.downsample.", "downsample_layers.1.").replace(
            "stages.2.downsample.", "downsample_layers.2.").replace("stages.3.downsample.", "downsample_layers.3.")
        official["backbone.0." + k] = v
    for k in list(official):
        if k.startswith("backbone.0.downsample_layers.0."):
            official[k.replace("downsample_layers.0.", "patch_embed.")] = official[k]  # DINO registers the stem twice
    official["backbone.0.norm0.weight"] = official["backbone.0.norm0.bias"] = torch.empty(96, device="meta")
    with pytest.raises(ValueError, match="give its backbone and return_interm_indices"):
        convert_official_state(official)
    converted, lines = convert_official_state(official, "convnext_tiny_1k", levels)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {"backbone.0." + k: tuple(v.shape)
                                                                 for k, v in ours.items()}
    assert "3 output norms kept" in lines[0] and "6 dropped (norm0, patch_embed)" in lines[0]


def test_convnext_imagenet_file_in_the_original_layout_loads(tmp_path):
    """An original ConvNeXt ImageNet file (downsample_layers / stages.i.j / dwconv / pwconv, final norm, head)
    loads into timm's ConvNeXt through timm's filter, every tensor in its place."""
    from models.common.backbones.timm_backbone import load_imagenet
    tiny = dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))
    torch.manual_seed(0)
    ref = TimmBackbone("convnext_tiny_1k", [1, 2, 3], overrides=tiny)
    original = {}
    for k, v in ref.body.state_dict().items():
        k = k.replace("stem.", "downsample_layers.0.").replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv")
        for i in (1, 2, 3):
            k = k.replace(f"stages.{i}.downsample.", f"downsample_layers.{i}.")
        original[k.replace(".blocks.", ".")] = v.clone()
    original.update({"norm.weight": torch.ones(64), "norm.bias": torch.zeros(64), "head.weight": torch.zeros(3, 64),
                     "head.bias": torch.zeros(3)})
    torch.save({"model": original}, tmp_path / "convnext_tiny_1k_224_ema.pth")
    bb = TimmBackbone("convnext_tiny_1k", [1, 2, 3], overrides=tiny)
    load_imagenet(bb, str(tmp_path / "convnext_tiny_1k_224_ema.pth"))
    for k, v in ref.body.state_dict().items():
        assert torch.equal(bb.body.state_dict()[k], v), k


def test_bad_invocations_are_one_line(tmp_path):
    with pytest.raises(ToolError, match="is IN: write the converted checkpoint to another file"):
        convert_checkpoint.main([str(tmp_path / "a.pth"), str(tmp_path / "a.pth")])
    # --verify without -c works only for a file whose config is recognised (an official Deformable DETR release)
    torch.save({"model": {"w": torch.zeros(1)}}, tmp_path / "a.pth")
    with pytest.raises(ToolError, match="--verify needs -c CONFIG"):
        convert_checkpoint.main([str(tmp_path / "a.pth"), str(tmp_path / "b.pth"), "--verify"])


# the earlier AugDETR reproduction's choices on the run-size tiny model (1 encoder layer: HAE on it, EMCA mixing it)
REPRO = dict(use_hae=True, num_hae_layers=1, hae_ffn=True, use_emca=True, emca_shared_value_proj=True,
             emca_gate_input="content", emca_output_proj="per_layer")
TO_REPRODUCTION = {".dense_attn.": ".std_self_attn.", ".dense_norm.": ".norm_std.", ".dense_linear1.": ".linear1_std.",
                   ".dense_linear2.": ".linear2_std.", ".dense_norm2.": ".norm2_std.",
                   ".cross_attn.mix_weights.": ".encoder_mixing_weights."}


@pytest.fixture(scope="module")
def reproduction_checkpoint(tmp_path_factory):
    """(path, model): a tiny model with the reproduction's choices and name-keyed weights, saved as the
    reproduction's main.py saves one: its key names and an argparse namespace of official DINO's keys plus
    its three flags."""
    import argparse

    from models import build_model

    from name_keyed_weights import init_by_name

    args = tiny_args(**dict(RUN, **REPRO))
    model = init_by_name(build_model(args)[0]).eval()
    state = {}
    for key, value in model.state_dict().items():
        for ours, theirs in TO_REPRODUCTION.items():
            key = key.replace(ours, theirs)
        state[key] = value
    saved = {k: v for k, v in vars(args).items() if not k.startswith(("hae_", "emca_", "num_hae"))}
    saved.update(config_file="config/DINO/DINO_4scale.py", num_hybrid_layers=1, output_dir="logs/x")
    path = tmp_path_factory.mktemp("repro") / "checkpoint0011.pth"
    torch.save({"model": state, "args": argparse.Namespace(**saved), "epoch": 11, "optimizer": {}}, path)
    return str(path), model


def _logits(model):
    with torch.no_grad():
        return model.eval()(tiny_batch()[0])["pred_logits"]


def test_reproduction_checkpoint_converts_with_the_config_that_reproduces_it(tmp_path, reproduction_checkpoint):
    from tools.common import load_tool_model
    raw, model = reproduction_checkpoint
    out = str(tmp_path / "converted.pth")
    lines = convert_checkpoint.main([raw, out, "--verify"])
    assert lines[0].startswith("the earlier AugDETR reproduction's checkpoint (HAE in encoder layers 0..0 (with")
    assert "main.py needs -c config/DINO/DINO_4scale.py --options" in lines[1] and "emca_gate_input=content" in lines[1]
    assert lines[-1].startswith("verified:")
    stored = load_checkpoint(out)["args"]
    assert {k: stored[k] for k in REPRO} == REPRO and stored["emca_gate_init"] == "xavier"
    assert stored["backbone_weights"] is None and stored["config_file"] == "config/DINO/DINO_4scale.py"
    for checkpoint, origin in ((out, "the one stored in"), (raw, "the one reproducing")):  # converted, or on load
        _, loaded, _, line = load_tool_model(None, checkpoint)
        assert origin in line and torch.allclose(_logits(loaded), _logits(model), atol=1e-6)


def test_reproduction_checkpoint_whose_args_disagree_is_one_line(tmp_path, reproduction_checkpoint):
    ckpt = torch.load(reproduction_checkpoint[0], weights_only=False)
    ckpt["args"].use_hae = False
    torch.save(ckpt, tmp_path / "bad.pth")
    with pytest.raises(ToolError, match=r"bad.pth: its args say use_hae=False use_emca=True but its tensors hold HAE"):
        convert_checkpoint.main([str(tmp_path / "bad.pth"), str(tmp_path / "out.pth")])


def test_main_evaluates_a_reproduction_checkpoint_converted_on_load(tmp_path, reproduction_checkpoint):
    """main.py --eval --resume on the reproduction's file: converted on load, with a line naming the options
    the run lacks (here the default gate input)."""
    import main

    from tiny_configs import options as run_options
    opts = run_options(RUN, **dict(REPRO, emca_gate_input="content_pos"), batch_size=1, synthetic_num_train=2,
                       synthetic_num_val=2, dataset_file="synthetic", backbone_weights=None)
    main.main(main.build_args(["-c", "config/DINO/DINO_4scale.py", "--output_dir", str(tmp_path / "eval"), "--eval",
                               "--resume", reproduction_checkpoint[0],
                               "--num_workers", "0", "--device", "cpu", "--options", *opts,
                               f"synthetic_dir={tmp_path / 'data'}"]))
    log = "\n".join(open(os.path.join(root, f)).read() for root, _, files in os.walk(tmp_path / "eval")
                    for f in files if f == "info.txt")
    assert "converted on load: the earlier AugDETR reproduction's checkpoint" in log
    assert "this config differs from the reproduction in emca_gate_input=content_pos" in log


def test_official_detr_file_is_written_unchanged_and_verifies(tmp_path):
    """An official DETR R50 file (official key list, tests/detr_reference.py) needs no conversion; --verify
    loads it strictly into config/DETR/detr_r50.py's model."""
    from detr_reference import write_official_r50
    path = str(tmp_path / "detr-r50-e632da11.pth")
    state = write_official_r50(path)
    out = tmp_path / "detr_r50.pth"
    lines = convert_checkpoint.main([path, str(out), "-c", "config/DETR/detr_r50.py", "--verify", "--options",
                                     "backbone_weights=None"])
    assert "written unchanged" in lines[0] and lines[-1].startswith(f"verified: {out} loads with strict=True")
    converted = load_checkpoint(str(out))  # now with this project's integrity digest
    assert list(converted["model"]) == list(state) and converted["args"]["num_queries"] == 100
