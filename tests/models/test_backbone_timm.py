"""Swin/ConvNeXt backbones (models/common/backbones/timm_backbone.py): DINO's features, masks, freezing,
activation checkpointing, ImageNet files, and a tiny Swin DINO that trains and evaluates."""
import json
import os

import pytest
import timm
import torch
from timm.models import swin_transformer as timm_swin

import main
from models.common.backbones import timm_backbone as backbone_timm
from models.common.backbones.official_dino import convert_official_state
from models.common.backbones.timm_backbone import TimmBackbone
from models.common.backbones.weights import BackboneWeightsError
from util.misc import NestedTensor
from util.slconfig import ConfigError

from tiny_configs import RUN, TINY_SWIN, config_args, options

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "dino_swin_tiny")
FIXTURE = torch.load(os.path.join(DATA, "swin_tiny_fixture.pth"), weights_only=True)
TINY_CONVNEXT = dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))


def fixture_backbone(indices=(0, 1, 2, 3), **kw) -> TimmBackbone:
    """The tiny Swin with the fixture's weights (converted from DINO's keys), in eval mode."""
    bb = TimmBackbone("swin_T_224_1k", list(indices), overrides=TINY_SWIN, **kw)
    state, _ = convert_official_state(FIXTURE["state_dict"])
    unused = tuple(f"backbone.0.norm{k}." for k in range(4) if k not in indices)  # the fixture returns all 4
    bb.load_state_dict({k[len("backbone.0."):]: v for k, v in state.items() if not k.startswith(unused)}, strict=True)
    return bb.eval()


def test_timm_is_the_pinned_release(monkeypatch):
    """requirements.txt pins the release _PadFirstSwinBlock is checked against; another one is refused."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "requirements.txt")) as f:
        assert f"timm=={backbone_timm.PINNED_TIMM}" in f.read().split()
    assert timm.__version__ == backbone_timm.PINNED_TIMM
    monkeypatch.setattr(timm, "__version__", "9.9.9")
    with pytest.raises(RuntimeError, match=r"timm 9\.9\.9 is installed.*pip install timm==1\.0\.31"):
        TimmBackbone("swin_T_224_1k", [1, 2, 3], overrides=TINY_SWIN)


@pytest.mark.parametrize("case", [0, 1, 2], ids=["224x224", "100x132", "29x35"])
def test_swin_features_equal_dino(case):
    """DINO's outputs of its own Swin on the same weights: equal (measured: max abs diff 0.0)."""
    bb = fixture_backbone()
    entry = FIXTURE["cases"][case]
    with torch.no_grad():
        outs = bb.features(entry["input"])
    assert len(outs) == 4
    for ours, dino in zip(outs, entry["outputs"]):
        assert ours.shape == dino.shape
        torch.testing.assert_close(ours, dino, atol=1e-5, rtol=0)


def test_timm_order_roll_then_pad_would_differ():
    """Why _PadFirstSwinBlock exists: timm's own block (roll, then pad) misses DINO's numbers on a size
    that is not a multiple of the window; 224x224 (all stages whole windows) is unaffected."""
    bb = fixture_backbone()
    for block in bb.body.modules():
        if isinstance(block, backbone_timm._PadFirstSwinBlock):
            block.__class__ = timm_swin.SwinTransformerBlock
    with torch.no_grad():
        odd = FIXTURE["cases"][1]
        diff = max((a - b).abs().max().item() for a, b in zip(bb.features(odd["input"]), odd["outputs"]))
        even = FIXTURE["cases"][0]
        same = max((a - b).abs().max().item() for a, b in zip(bb.features(even["input"]), even["outputs"]))
    assert diff > 1e-2 and same < 1e-5


def test_returned_stages_masks_and_channels():
    bb = fixture_backbone(indices=(1, 2, 3))
    assert bb.num_channels == [16, 32, 64] and bb.strides == [8, 16, 32]
    assert not hasattr(bb, "norm0")
    x = torch.randn(2, 3, 100, 132)
    mask = torch.zeros(2, 100, 132, dtype=torch.bool)
    mask[1, :, 70:] = True  # the second image is 70 px wide, padded to 132
    with torch.no_grad():
        out = bb(NestedTensor(x, mask))
    assert list(out) == ["0", "1", "2"]
    for level, (h, w) in zip(out.values(), [(13, 17), (7, 9), (4, 5)]):
        assert level.tensors.shape[-2:] == (h, w) and level.mask.shape == (2, h, w)
        assert not level.mask[0].any() and level.mask[1, :, -1].all() and not level.mask[1, :, 0].any()


def test_convnext_stages_and_norms():
    bb = TimmBackbone("convnext_tiny_1k", [0, 1, 2, 3], overrides=TINY_CONVNEXT).eval()
    assert bb.num_channels == [8, 16, 32, 64] and all(hasattr(bb, f"norm{k}") for k in range(4))
    with torch.no_grad():
        outs = bb.features(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, 8, 16, 24), (1, 16, 8, 12), (1, 32, 4, 6), (1, 64, 2, 3)]
    # each output is its norm's: zero mean and unit variance over channels before the affine (weight 1, bias 0)
    torch.testing.assert_close(outs[2].mean(1), torch.zeros(1, 4, 6), atol=1e-5, rtol=0)


def test_freezing_by_keyword_and_lr_backbone():
    bb = TimmBackbone("swin_T_224_1k", [1, 2, 3], overrides=TINY_SWIN,
                      freeze_keywords=["patch_embed", "layers.0.", "layers.1.downsample"])
    frozen = {n for n, p in bb.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("body.patch_embed", "body.layers.0.", "body.layers.1.downsample"))
                          for n in frozen)
    assert "body.layers.1.blocks.0.attn.qkv.weight" not in frozen and "body.layers.0.blocks.1.mlp.fc1.bias" in frozen
    bb = TimmBackbone("swin_T_224_1k", [1, 2, 3], overrides=TINY_SWIN, train_backbone=False)
    assert not any(p.requires_grad for p in bb.parameters())


@pytest.mark.parametrize("name, overrides", [("swin_T_224_1k", TINY_SWIN), ("convnext_tiny_1k", TINY_CONVNEXT)])
def test_gradient_checkpointing_gives_the_same_gradients(name, overrides):
    """use_checkpoint recomputes every block in backward (each runs twice) and changes no gradient."""
    x = torch.randn(2, 3, 45, 61)
    grads, calls = [], []
    for use in (False, True):
        torch.manual_seed(0)
        bb = TimmBackbone(name, [1, 2, 3], overrides=overrides, use_checkpoint=use).train()
        count = [0]
        for m in bb.body.modules():
            if type(m).__name__ in ("_PadFirstSwinBlock", "ConvNeXtBlock"):
                # a pre-hook: the recomputation stops early once it has what backward needs (no post-hook)
                m.register_forward_pre_hook(lambda *_, c=count: c.__setitem__(0, c[0] + 1))
        sum((f * f).mean() for f in bb.features(x.requires_grad_(False))).backward()
        grads.append({n: p.grad.clone() for n, p in bb.named_parameters()})
        calls.append(count[0])
    assert calls[1] == 2 * calls[0] > 0
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-6, rtol=1e-5, msg=n)


def test_imagenet_file_from_backbone_dir_or_path(tmp_path):
    """DINO's file name in backbone_dir (original Swin layout: downsample at the end of a stage, head,
    final norm, relative_position_index) loads into the body; a missing folder/file is one line."""
    args = config_args(backbone="swin_T_224_1k", backbone_weights="imagenet", backbone_dir=None)
    with pytest.raises(BackboneWeightsError, match="backbone_dir is not set: pass --options backbone_dir="):
        backbone_timm.imagenet_file(args)
    args.backbone_dir = str(tmp_path)
    assert backbone_timm.imagenet_file(args) == str(tmp_path / "swin_tiny_patch4_window7_224.pth")
    with pytest.raises(BackboneWeightsError, match="swin_tiny_patch4_window7_224.pth' does not exist"):
        backbone_timm.build_timm_backbone(args)
    original = {k[len("backbone.0."):]: v for k, v in FIXTURE["state_dict"].items()
                if not k.startswith(tuple(f"backbone.0.norm{i}" for i in range(4)))}
    original.update({"norm.weight": torch.ones(64), "norm.bias": torch.zeros(64), "head.weight": torch.zeros(5, 64),
                     "head.bias": torch.zeros(5)})
    torch.save({"model": original}, tmp_path / "swin_tiny_patch4_window7_224.pth")
    bb = TimmBackbone("swin_T_224_1k", [1, 2, 3], overrides=TINY_SWIN)
    backbone_timm.load_imagenet(bb, str(tmp_path / "swin_tiny_patch4_window7_224.pth"))
    ref = fixture_backbone(indices=(1, 2, 3))
    for k, v in ref.body.state_dict().items():
        assert torch.equal(bb.body.state_dict()[k], v), k
    del original["layers.0.blocks.0.attn.qkv.weight"]
    torch.save({"model": original}, tmp_path / "broken.pth")
    with pytest.raises(BackboneWeightsError, match=r"does not fit.*missing \['layers.0.blocks.0.attn.qkv.weight'\]"):
        backbone_timm.load_imagenet(bb, str(tmp_path / "broken.pth"))


def test_resnet_refuses_timm_only_keys():
    from models.common.backbones import build_backbone
    with pytest.raises(ValueError, match="not backbone=resnet18; set use_checkpoint=False"):
        build_backbone(config_args(backbone="resnet18", use_checkpoint=True))




def test_tiny_swin_dino_trains_and_evaluates(tmp_path, tiny_swin_spec):
    """Two training iterations with activation checkpointing, then an evaluation, on the CPU; then the same
    run evaluates an official-layout DINO checkpoint directly (converted on load)."""
    opts = options(RUN, backbone="swin_T_224_1k", backbone_weights="none", use_checkpoint=True, epochs=1,
                   batch_size=1, synthetic_num_train=2, synthetic_num_val=2, return_interm_indices=[0, 1, 2, 3],
                   num_feature_levels=4, num_queries=20, num_select=20)
    base = ["--num_workers", "0", "--device", "cpu", "--options", *opts, f"synthetic_dir={tmp_path / 'data'}"]
    out = tmp_path / "run"
    main.main(main.build_args(["--output_dir", str(out), *base]))
    with open(out / "log.txt") as f:
        line = json.loads(f.readline())
    assert line["train_nonfinite_steps"] == 0 and len(line["test_coco_eval_bbox"]) == 12
    assert torch.isfinite(torch.tensor(line["train_loss"]))
    # the trained model with DINO's backbone keys (the fixture's), as an official checkpoint would hold them
    model = torch.load(out / "checkpoint.pth", weights_only=False)["model"]
    official = {k: v for k, v in model.items() if not k.startswith("backbone.0.")}
    official.update(FIXTURE["state_dict"])
    torch.save({"model": official}, tmp_path / "official.pth")
    main.main(main.build_args(["--output_dir", str(tmp_path / "eval"), "--eval", "--resume",
                               str(tmp_path / "official.pth"), *base]))
    assert any("converted on load: official DINO swin backbone" in line
               for line in open(tmp_path / "run" / "info.txt").read().splitlines() + _logs(tmp_path / "eval"))


def _logs(folder):
    """Every line of the text logs under `folder`."""
    lines = []
    for root, _, files in os.walk(folder):
        for name in files:
            if name.endswith(".txt"):
                lines += open(os.path.join(root, name), errors="replace").read().splitlines()
    return lines


def test_random_swin_is_not_refused_for_resnet_only_keys(tmp_path):
    """backbone_weights=none with a Swin: the frozen-stem / FrozenBatchNorm2d checks concern ResNets only,
    a frozen backbone (lr_backbone <= 0) is still refused."""
    from engine.run import check_from_scratch
    args = main.build_args(["-c", "config/DINO/DINO_4scale_swin.py", "--output_dir", str(tmp_path),
                            "--options", "backbone_weights=none"])
    assert args.backbone_freeze_stem is True and args.batch_norm_type == "FrozenBatchNorm2d"
    check_from_scratch(args)
    args.lr_backbone = 0.0
    with pytest.raises(ConfigError, match="lr_backbone=0.0 keeps random layers frozen"):
        check_from_scratch(args)
