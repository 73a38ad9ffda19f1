"""Swin and ConvNeXt backbones built with timm, under DINO's config names, giving DINO's features.

Layout of the parameters (what a checkpoint of this project holds under `backbone.0.`):
  body.<timm key>   the timm model (classifier head and final norm pruned), e.g. body.layers.1.downsample...
  norm{k}.*         one LayerNorm per returned stage k (DINO's per-output norms, DINO's names)
Official DINO checkpoints name the Swin/ConvNeXt keys as the original implementations do, directly
under `backbone.0.`; official_dino.convert_official_state maps them (on load, and convert_checkpoint.py).

Swin follows DINO's arithmetic exactly: any input size (timm's dynamic size and patch padding), the
window never clipped to the feature size (always_partition), and in each block the features are padded
to whole windows BEFORE the cyclic shift. timm rolls first and pads after, which changes the features
(by 0.4-1.7 on random weights) whenever a stage is not a multiple of the window. `_PadFirstSwinBlock`
replaces timm's `SwinTransformerBlock._attn`, a method below timm's public API, so timm is pinned
(PINNED_TIMM; tests/models/test_backbone_timm.py checks it and the equality with DINO's outputs).
timm's public API cannot give this order: its block pads inside `_attn`, after the shift, and padding
the block's input instead pads before `norm1`, so the padded tokens would enter the window attention
(as keys and values) as the LayerNorm's bias rather than DINO's zeros, which changes every feature
next to the padding.
"""
import os
import re
from functools import partial
from typing import Dict, List, Optional, Sequence

import timm
import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d, PatchEmbed
from timm.models import convnext as timm_convnext
from timm.models import swin_transformer as timm_swin
from torch import nn

from util.misc import NestedTensor

from .table import STAGE_STRIDES, BackboneSpec, backbone_spec
from .weights import BackboneWeightsError, is_none, read_state_file

PINNED_TIMM = "1.0.31"  # _PadFirstSwinBlock depends on SwinTransformerBlock internals of this release
SWIN_DROP_PATH = 0.2  # DINO's SwinTransformer default (its configs do not change it); ConvNeXt: 0 as in DINO


def check_timm_version() -> None:
    """Refuse another timm release: the pad-before-shift block is checked against PINNED_TIMM only."""
    if timm.__version__ != PINNED_TIMM:
        raise RuntimeError(f"timm {timm.__version__} is installed, but models/common/backbones/timm_backbone.py "
                           f"replaces an internal of timm {PINNED_TIMM}; run `pip install timm=={PINNED_TIMM}`")


class _PadFirstSwinBlock(timm_swin.SwinTransformerBlock):
    """timm's Swin block with DINO's order in the attention: pad to whole windows, then shift."""

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) normalised features -> (B, H, W, C) window-attention output."""
        _, H, W, C = x.shape
        wh, ww = self.window_size
        x = F.pad(x, (0, 0, 0, (ww - W % ww) % ww, 0, (wh - H % wh) % wh))
        _, Hp, Wp, _ = x.shape
        shift = tuple(self.shift_size)
        if any(shift):  # the shift mask is laid out on the padded grid, as in DINO
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        windows = timm_swin.window_partition(x, self.window_size).view(-1, self.window_area, C)
        windows = self.attn(windows, mask=self.get_attn_mask(x))
        x = timm_swin.window_reverse(windows.view(-1, wh, ww, C), self.window_size, Hp, Wp)
        if any(shift):
            x = torch.roll(x, shifts=shift, dims=(1, 2))
        return x[:, :H, :W, :].contiguous()


def _make_body(spec: BackboneSpec, overrides: Optional[Dict] = None, device=None) -> nn.Module:
    """The timm model of `spec` (overrides: constructor values, e.g. a tiny width in tests)."""
    kwargs = dict(spec.timm_kwargs, **(overrides or {}))
    if spec.family == "swin":
        kwargs = dict(dict(drop_path_rate=SWIN_DROP_PATH), **kwargs)
        kwargs.update(strict_img_size=False, always_partition=True,
                      embed_layer=partial(PatchEmbed, dynamic_img_pad=True))
    return timm.create_model(spec.timm_variant, pretrained=False, num_classes=0, device=device, **kwargs)


class TimmBackbone(nn.Module):
    """A timm Swin or ConvNeXt returning the stages `return_interm_indices` (0..3, strides 4..32),
    each after its own norm, as NCHW NestedTensors with the padding mask resized to the stage.

    train_backbone=False freezes every parameter; freeze_keywords freezes parameters whose name in
    this module (body.<timm key> / norm{k}) contains any of them (DINO's backbone_freeze_keywords).
    use_checkpoint: activation checkpointing per block (timm's set_grad_checkpointing).
    """

    def __init__(self, name: str, return_interm_indices: Sequence[int], train_backbone: bool = True,
                 freeze_keywords: Optional[Sequence[str]] = None, use_checkpoint: bool = False,
                 overrides: Optional[Dict] = None, device=None):
        super().__init__()
        self.spec = backbone_spec(name)
        if self.spec.family not in ("swin", "convnext"):
            raise ValueError(f"backbone={name!r} is a {self.spec.family}, not a Swin or ConvNeXt")
        check_timm_version()
        self.indices = sorted(return_interm_indices)
        body = _make_body(self.spec, overrides, device)
        body.prune_intermediate_layers(self.indices, prune_norm=True, prune_head=True)
        if self.spec.family == "swin":
            for block in body.modules():
                if type(block) is timm_swin.SwinTransformerBlock:
                    block.__class__ = _PadFirstSwinBlock
        body.set_grad_checkpointing(use_checkpoint)
        self.body = body
        chans = [info["num_chs"] for info in body.feature_info]
        for k in self.indices:  # DINO: LayerNorm(eps 1e-5) for Swin, channels-first LayerNorm(eps 1e-6) for ConvNeXt
            norm = nn.LayerNorm(chans[k], device=device) if self.spec.family == "swin" else \
                LayerNorm2d(chans[k], eps=1e-6, device=device)
            self.add_module(f"norm{k}", norm)
        self.num_channels: List[int] = [chans[k] for k in self.indices]
        self.strides: List[int] = [STAGE_STRIDES[k] for k in self.indices]
        for pname, p in self.named_parameters():
            if not train_backbone or any(word in pname for word in freeze_keywords or ()):
                p.requires_grad_(False)

    def features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """x: (B, 3, H, W) -> [(B, C_k, ceil(H / 2^(k+2)), ...) for k in return_interm_indices] (Swin:
        DINO's padded sizes; ConvNeXt: floor, its strided convolutions do not pad)."""
        swin = self.spec.family == "swin"
        x = self.body.patch_embed(x) if swin else self.body.stem(x)
        out = []
        for k, stage in enumerate(self.body.layers if swin else self.body.stages):
            x = stage(x)
            if k in self.indices:
                y = getattr(self, f"norm{k}")(x)
                out.append(y.permute(0, 3, 1, 2).contiguous() if swin else y)  # timm's Swin is NHWC
        return out

    def forward(self, tensor_list: NestedTensor) -> Dict[str, NestedTensor]:
        out = {}
        for i, x in enumerate(self.features(tensor_list.tensors)):
            mask = F.interpolate(tensor_list.mask[None].float(), size=x.shape[-2:]).to(torch.bool)[0]
            out[str(i)] = NestedTensor(x, mask)
        return out


# ---- weights ------------------------------------------------------------------------------------

def body_keys_from_original(family: str, state: Dict[str, torch.Tensor],
                             body: Optional[nn.Module] = None) -> Dict[str, torch.Tensor]:
    """Keys of the original Swin/ConvNeXt implementations (ImageNet files, DINO's backbone) -> timm's.

    Swin: the downsample of DINO's stage i is timm's stage i+1's (timm merges at the start of a stage);
    relative_position_index / attn_mask are recomputed buffers in timm, dropped. ConvNeXt: timm's own
    checkpoint filter (it reads `body` for shapes); DINO's alias of the stem, patch_embed.*, is dropped.
    """
    if family == "swin":
        out = {}
        for k, v in state.items():
            if k.endswith(("relative_position_index", "attn_mask")):
                continue
            out[re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample", k)] = v
        return out
    state = {k: v for k, v in state.items() if not k.startswith("patch_embed.")}
    return timm_convnext.checkpoint_filter_fn(state, body)


def imagenet_file(args) -> Optional[str]:
    """The ImageNet file a timm backbone starts from: backbone_weights when it is a path, else DINO's
    file name in backbone_dir; None = random (backbone_weights none)."""
    spec, weights = backbone_spec(args.backbone), args.backbone_weights
    if is_none(weights):
        return None
    if isinstance(weights, str) and (os.sep in weights or weights.endswith(".pth") or os.path.isfile(weights)):
        return os.path.expanduser(weights)
    if args.backbone_dir is None:
        raise BackboneWeightsError(
            f"backbone={args.backbone} starts from its ImageNet file {spec.imagenet}, but backbone_dir is not set: "
            f"pass --options backbone_dir=/folder/with/{spec.imagenet} (or backbone_weights=/path/to/file.pth, or "
            f"backbone_weights=none when --resume or --pretrain_model_path gives every weight)")
    return os.path.join(os.path.expanduser(args.backbone_dir), spec.imagenet)


def load_imagenet(backbone: TimmBackbone, path: str) -> None:
    """Load an ImageNet classification file (original or timm layout) into backbone.body; its head and
    final norm are not used; every body tensor must be there."""
    state = read_state_file(path)
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "norm.", "head_norm."))}
    if "layers.0.downsample.reduction.weight" in state or "downsample_layers.0.0.weight" in state:
        state = body_keys_from_original(backbone.spec.family, state, backbone.body)
    own = backbone.body.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(k for k in state if k not in own)
    bad = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise BackboneWeightsError(f"backbone_weights file {path!r} does not fit backbone "
                                   f"{backbone.spec.timm_variant}: missing {missing[:3]}, unexpected "
                                   f"{unexpected[:3]}, other shapes {bad[:3]}; "
                                   f"pass the ImageNet file of the same model ({backbone.spec.imagenet})")
    backbone.body.load_state_dict({k: state[k] for k in own})


def build_timm_backbone(args) -> TimmBackbone:
    """The backbone named by args.backbone with its ImageNet weights (args.backbone_weights/backbone_dir)."""
    if args.dilation:
        raise ValueError(f"dilation=True is implemented for ResNets only, not backbone={args.backbone}; "
                         f"set dilation=False")
    backbone = TimmBackbone(args.backbone, args.return_interm_indices, train_backbone=args.lr_backbone > 0,
                            freeze_keywords=args.backbone_freeze_keywords, use_checkpoint=args.use_checkpoint)
    path = imagenet_file(args)
    if path is not None:
        if not os.path.isfile(path):
            raise BackboneWeightsError(f"backbone={args.backbone}: ImageNet file {path!r} does not exist; put "
                                       f"{backbone_spec(args.backbone).imagenet} there, or pass "
                                       f"backbone_weights=/path/to/file.pth or backbone_weights=none")
        load_imagenet(backbone, path)
    return backbone
