"""The released Deformable DETR files (fundamentalvision/Deformable-DETR, README "Main Results", all R50,
50 epochs, total batch 32): which config of this project each one loads into, and how a file is recognised.

Their state_dicts are this project's layout key for key (DeformableDETR registers the official modules
under the official names), so loading needs no renaming: the aliased heads (six names of one module
without refinement, transformer.decoder.* copies with it) load into the same shared modules, and the
thop profiler counters some files carry (`*.total_ops`, `*.total_params`, which the official loader skips)
are dropped by the converter below, applied on load and by tools/convert_checkpoint.py. A file that does
not fit the model in use is named with the config it needs (`official_origin`, used by the one-line
misfit error of main.py and the tools).
"""
import os
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch

from ..registry import CONFIG_DIR, register_checkpoint_origin, register_state_converter

THOP_SUFFIXES = ("total_ops", "total_params")


class OfficialFile(NamedTuple):
    """One released file: its variant's name, this project's config for it, the file name third-party scripts
    and HF's converter use (the README links Google Drive only), the Drive id, the README's box AP."""
    title: str
    config: str  # relative to the repository root
    filename: str
    drive_id: str
    ap: Tuple[float, float, float, float]  # AP, APs, APm, APl


def _config(name: str) -> str:
    return os.path.join(os.path.basename(CONFIG_DIR), "DeformableDETR", name)


OFFICIAL_FILES: Dict[str, OfficialFile] = {
    "single_scale": OfficialFile("Deformable DETR single-scale", _config("deformable_detr_single_scale.py"),
                                 "r50_deformable_detr_single_scale-checkpoint.pth",
                                 "1WEjQ9_FgfI5sw5OZZ4ix-OKk-IJ_-SDU", (39.4, 20.6, 43.0, 55.5)),
    "single_scale_dc5": OfficialFile("Deformable DETR single-scale DC5",
                                     _config("deformable_detr_single_scale_dc5.py"),
                                     "r50_deformable_detr_single_scale_dc5-checkpoint.pth",
                                     "1m_TgMjzH7D44fbA-c_jiBZ-xf-odxGdk", (41.5, 24.1, 45.3, 56.0)),
    "multiscale": OfficialFile("Deformable DETR (multi-scale)", _config("deformable_detr.py"),
                               "r50_deformable_detr-checkpoint.pth", "1nDWZWHuRwtwGden77NLM9JoWe-YisJnA",
                               (44.5, 27.1, 47.6, 59.6)),
    "box_refine": OfficialFile("Deformable DETR + iterative bounding box refinement",
                               _config("deformable_detr_refine.py"),
                               "r50_deformable_detr_plus_iterative_bbox_refinement-checkpoint.pth",
                               "1JYKyRYzUH7uo9eVfDaVCiaIGZb5YTCuI", (46.2, 28.3, 49.2, 61.5)),
    "two_stage": OfficialFile("Deformable DETR ++ two-stage", _config("deformable_detr_two_stage.py"),
                              "r50_deformable_detr_plus_iterative_bbox_refinement_plus_plus_two_stage-checkpoint.pth",
                              "15I03A7hNTpwuLNdfuEmW9_taZMNVssEp", (46.9, 29.6, 50.1, 61.6)),
}


def drive_url(variant: str) -> str:
    return f"https://drive.google.com/file/d/{OFFICIAL_FILES[variant].drive_id}/view?usp=sharing"


def _strip(state: Dict[str, Any]) -> Dict[str, Any]:
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def is_deformable_detr_state(state: Dict[str, Any]) -> bool:
    """The layout of Deformable DETR (official or this project's): learned 2C-wide queries with reference
    points, or two-stage's pos_trans; not DINO (no denoising label embedding, no learned content queries)."""
    state = _strip(state)
    if "transformer.level_embed" not in state or "label_enc.weight" in state or "transformer.tgt_embed.weight" in state:
        return False
    return "transformer.pos_trans.weight" in state or (
        "transformer.reference_points.weight" in state and "query_embed.weight" in state)


def variant_of(state: Dict[str, Any], saved: Optional[Dict[str, Any]] = None) -> Optional[str]:
    """The OFFICIAL_FILES variant of a Deformable DETR state (its stored official args decide DC5, which changes
    no key), else None."""
    state = _strip(state)
    if not is_deformable_detr_state(state):
        return None
    if "transformer.pos_trans.weight" in state:
        return "two_stage"
    if "transformer.decoder.bbox_embed.0.layers.0.weight" in state:
        return "box_refine"
    if "input_proj.1.0.weight" not in state:
        return "single_scale_dc5" if isinstance(saved, dict) and saved.get("dilation") else "single_scale"
    return "multiscale"


@register_checkpoint_origin
def official_origin(state: Dict[str, Any], saved: Optional[Dict[str, Any]]) -> Optional[Tuple[str, str]]:
    """(what the file is, the config it loads into) for a Deformable DETR file without this project's stored
    config (an official release, or its state_dict alone); None otherwise."""
    if isinstance(saved, dict) and "config_file" in saved:
        return None
    variant = variant_of(state, saved)
    if variant is None:
        return None
    return f"an official {OFFICIAL_FILES[variant].title} file", OFFICIAL_FILES[variant].config


@register_state_converter
def drop_thop_counters(state: Dict[str, torch.Tensor], args=None) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Drop the thop profiler's per-module counters (`*.total_ops`, `*.total_params`), as the official
    Deformable DETR loader does; every other key is kept as it is."""
    dropped = [k for k in state if k.rsplit(".", 1)[-1] in THOP_SUFFIXES]
    if not dropped:
        return state, []
    kept = {k: v for k, v in state.items() if k not in dropped}
    return kept, [f"dropped {len(dropped)} thop profiler counters (*.total_ops / *.total_params), as the official "
                  f"Deformable DETR loader does"]
