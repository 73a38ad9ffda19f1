"""Official DINO checkpoints with a Swin or ConvNeXt backbone -> this project's layout.

DINO names those backbones' keys as the original implementations do, directly under `backbone.0.`;
this project builds them with timm under `backbone.0.body.<timm key>` (timm_backbone.py). Everything
outside `backbone.0.` is named alike, and ResNet checkpoints need nothing.
"""
import re
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ...registry import register_state_converter
from .table import BACKBONES
from .timm_backbone import TimmBackbone, body_keys_from_original

PREFIX = "backbone.0."


def official_family(state: Dict[str, torch.Tensor]) -> Optional[str]:
    """'swin' / 'convnext' when `state` is an official DINO model state with that backbone, else None
    (this project's layout, or a ResNet, whose keys DINO and this project name alike)."""
    if any(k.startswith(PREFIX + "body.") for k in state):
        return None
    if PREFIX + "layers.0.blocks.0.attn.qkv.weight" in state:
        return "swin"
    if PREFIX + "downsample_layers.0.0.weight" in state:
        return "convnext"
    return None


def convert_official_state(state: Dict[str, torch.Tensor], backbone: Optional[str] = None,
                           return_interm_indices: Optional[Sequence[int]] = None
                           ) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """An official DINO model state -> this project's layout, and lines saying what was converted.

    Only `backbone.0.*` changes (everything else is named alike). Swin needs nothing else; ConvNeXt needs
    `backbone` (timm's filter reads the model's shapes) and `return_interm_indices`: DINO builds norm0..norm3
    whatever it returns, the norms of stages not returned are dropped. A state that is not official is
    returned as it is with no lines (a ResNet checkpoint converts to itself).
    """
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    family = official_family(state)
    if family is None:
        return state, []
    inner = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    norms = {k: v for k, v in inner.items() if re.fullmatch(r"norm\d\.(weight|bias)", k)}
    body = {k: v for k, v in inner.items() if k not in norms}
    dropped = []
    if family == "convnext":
        if backbone not in BACKBONES or return_interm_indices is None:
            raise ValueError("an official DINO ConvNeXt checkpoint converts with the config it was trained with: "
                             "give its backbone and return_interm_indices (convert_checkpoint.py -c CONFIG)")
        keep = {f"norm{k}." for k in return_interm_indices}
        dropped = [k for k in norms if not k.startswith(tuple(keep))]
        norms = {k: v for k, v in norms.items() if k not in dropped}
        meta = TimmBackbone(backbone, return_interm_indices, device="meta")
        body = {k: v for k, v in body.items() if not k.startswith("norm.")}
        dropped += [k for k in inner if k.startswith("patch_embed.")]
        new_body = body_keys_from_original(family, body, meta.body)
    else:
        dropped = [k for k in body if k.endswith(("relative_position_index", "attn_mask"))]
        new_body = body_keys_from_original(family, body)
    out = {k: v for k, v in state.items() if not k.startswith(PREFIX)}
    out.update({PREFIX + "body." + k: v for k, v in new_body.items()})
    out.update({PREFIX + k: v for k, v in norms.items()})
    lines = [f"official DINO {family} backbone: {len(new_body)} tensors renamed to {PREFIX}body.<timm key>, "
             f"{len({k.split('.')[0] for k in norms})} output norms kept as {PREFIX}norm<k>, {len(dropped)} dropped "
             f"({_summary(dropped)})"]
    return out, lines


def _summary(keys: List[str]) -> str:
    kinds = sorted({k.split(".")[-1] if "relative_position_index" in k else k.split(".")[0] for k in keys})
    return ", ".join(kinds) or "none"


@register_state_converter
def convert_on_load(state: Dict[str, torch.Tensor], args=None) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """convert_official_state with the run's backbone and return_interm_indices (when it has them)."""
    config = vars(args) if args is not None else {}
    return convert_official_state(state, config.get("backbone"), config.get("return_interm_indices"))
