"""tools/convert_checkpoint.py and models/common/backbones/official_dino.convert_official_state."""
import os

import pytest
import torch

from models.common.backbones.official_dino import convert_official_state
from models.common.backbones.timm_backbone import TimmBackbone
from tools import convert_checkpoint
from tools.common import ToolError
from util.checkpoint import load_checkpoint, load_model_state

from tiny_configs import MODEL, options, tiny_args

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
