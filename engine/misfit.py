"""Why a checkpoint's weights do not fit the model a run built: one line with the keys that cause it and a
fix that works (main.py and the tools).

The keys shown are config keys that change the model's tensors (Key.model) whose value differs from the
checkpoint's stored config. The ones that explain the misfit come first: each differing key is set back to
the checkpoint's value alone and the model's tensor shapes are rebuilt on the meta device (nothing is
allocated); a key whose value brings the shapes closer to the checkpoint's is one of them. The fix depends
on where the run's config came from (args.config_origin, set by engine/cli.py and tools/common.py):
  * the checkpoint's stored config: drop the given --options / flags that change those keys;
  * a config file (-c): for an evaluation or a tool, leave out -c; for training, the --options that set
    the checkpoint's values;
  * no stored config in the checkpoint: use -c with the config it was trained with.
"""
import argparse
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

import models
from util.checkpoint import CheckpointError
from util.config_schema import same_value

from .config import flag_keys, model_keys

MAX_PROBES = 8  # rebuilds on the meta device to rank the keys (each well under a second)
SHOWN = 3  # keys named in the message


def option_text(key: str, value: Any) -> str:
    """`key=value` as --options reads it back (util.slconfig.parse_option_value)."""
    if isinstance(value, (list, tuple)):
        return f"{key}=[{','.join(str(v) for v in value)}]"
    return f"{key}={'none' if value is None else value}"


def shapes(state: Dict[str, Any]) -> Dict[str, Tuple[int, ...]]:
    """name -> shape of a state dict's tensors ('module.' prefixes dropped)."""
    return {(k[7:] if k.startswith("module.") else k): tuple(v.shape) for k, v in state.items()
            if isinstance(v, torch.Tensor)}


def mismatch(model: Dict[str, Tuple[int, ...]], ckpt: Dict[str, Tuple[int, ...]], strict: bool = True) -> int:
    """Tensors of another shape and, when `strict`, those missing on either side."""
    other_shape = sum(model[k] != ckpt[k] for k in model.keys() & ckpt.keys())
    return other_shape + (len(model.keys() ^ ckpt.keys()) if strict else 0)


def _model_shapes(config: Dict[str, Any]) -> Optional[Dict[str, Tuple[int, ...]]]:
    """Tensor shapes of the model `config` builds (on the meta device, no weights read); None if it does
    not build."""
    args = argparse.Namespace(**dict(config, backbone_weights=None))
    try:
        with torch.device("meta"):
            return shapes(models.build_model(args)[0].state_dict())
    except Exception:  # noqa: BLE001 - a combination the builder refuses: rank the key as unexplained
        return None


def rank_differences(saved: Dict[str, Any], current: Dict[str, Any], ckpt_shapes: Dict[str, Tuple[int, ...]],
                     strict: bool = True) -> Tuple[List[Tuple[str, Any, Any]], int]:
    """(the model keys whose values differ, as (key, checkpoint's value, run's value), those that explain the
    misfit first (most tensors first), how many explain it).

    A key explains it when, with every differing key at the checkpoint's value, setting that one back to the
    run's value makes tensors differ from the checkpoint's (probing keys one at a time from the run's config
    instead would miss a key whose tensors another differing key also changes, e.g. num_queries next to
    hidden_dim)."""
    diffs = [(k, saved[k], current[k]) for k in model_keys(current)
             if k in saved and k in current and not same_value(current[k], saved[k])]
    fitted = dict(current, **{k: old for k, old, _ in diffs})
    base = _model_shapes(fitted)
    costs = {}
    for key, _old, new in diffs[:MAX_PROBES] if base is not None else ():
        probe = _model_shapes(dict(fitted, **{key: new}))
        costs[key] = (mismatch(probe, ckpt_shapes, strict) - mismatch(base, ckpt_shapes, strict) if probe is not None
                      else 1)
    ranked = sorted(diffs, key=lambda d: -costs.get(d[0], 0))
    return ranked, sum(cost > 0 for cost in costs.values())


def _given_as(key: str, origin: Dict[str, Any]) -> str:
    """How the command line set `key`: '--use_emca' or '--options hidden_dim=32'."""
    flags = origin.get("flags") or {}
    if key in flags:
        names = flag_keys()[key][0]
        return names[0] if flags[key] is True else f"{names[0]} {flags[key]}"
    return f"--options {option_text(key, (origin.get('options') or {})[key])}"


def suggested_fix(diffs: Sequence[Tuple[str, Any, Any]], explained: int, saved_config: Optional[str],
                  origin: Dict[str, Any], strict: bool, release: Optional[Tuple[str, str]] = None) -> str:
    """The fix of the misfit (see the module docstring); `explained` leading diffs cause it. `release`: what a
    file without a stored config is and the config it loads into, when a recogniser knows it."""
    culprits = list(diffs[:explained] or diffs)
    given = set(origin.get("options") or {}) | set(origin.get("flags") or {})
    if saved_config is None:
        fix = f"use -c {release[1]}" if release else "use -c <the config it was trained with>"
    elif origin.get("source") == "checkpoint":
        dropped = [_given_as(k, origin) for k, _, _ in culprits if k in given]
        fix = (f"drop {' and '.join(dropped)}" if dropped else
               "its stored config does not build these tensors (saved by other code?): pass -c <the config it "
               "was trained with>")
    elif origin.get("evaluation"):
        fix = ("leave out -c (the model is then built from the config stored in the checkpoint)"
               + (f", or add --options {' '.join(option_text(k, old) for k, old, _ in culprits)}" if culprits
                  else ""))
    elif culprits:
        fix = f"add --options {' '.join(option_text(k, old) for k, old, _ in culprits)}"
    else:
        fix = f"use -c {saved_config}"
    if not strict:
        fix += ", or --finetune_ignore SUBSTRING to skip those weights"
    return fix


def misfit_error(path: str, saved: Any, args: argparse.Namespace, ckpt_state: Dict[str, Any],
                 model_state: Dict[str, Any], strict: bool = True, full_list: str = "info.txt",
                 release: Optional[Tuple[str, str]] = None) -> CheckpointError:
    """The one-line CheckpointError for weights `ckpt_state` that do not fit the run's model (`model_state`);
    the caller keeps load_model_state's full error in `full_list`. `release`: (what the file is, the config
    it loads into) for a file without a stored config that models.checkpoint_origin recognises (an official
    release, e.g. Deformable DETR's), so the message names that config."""
    saved = saved if isinstance(saved, dict) else {}
    current = {k: getattr(args, k) for k in args.config_keys}
    stored = saved.get("config_file") if all(k in saved for k in ("config_file", "modelname")) else None
    ckpt_shapes, model_shapes = shapes(ckpt_state), shapes(model_state)
    diffs, explained = rank_differences(saved, current, ckpt_shapes, strict)
    origin = args.config_origin
    what = "the config stored in it" if origin["source"] == "checkpoint" else args.config_file
    shown = ", ".join(f"{k}={old!r} (now {new!r})" for k, old, new in diffs[:SHOWN])
    rest = len(diffs) - min(len(diffs), SHOWN)
    others = "" if not rest else f" (+{rest} more" + (", none of them changing tensor shapes)" if
                                                      explained <= SHOWN else ")")
    trained = saved.get("config_file") or (f"{release[1]} ({release[0]})" if release else
                                           "an unknown config (no config stored in the checkpoint)")
    return CheckpointError(
        f"{path} does not fit this model: it was trained with {trained}, this run's model comes from {what}"
        + (f"; differing keys: {shown}{others}" if diffs else "")
        + (f"; {mismatch(model_shapes, ckpt_shapes)} tensors differ (missing, extra or of another shape)" if strict
           else f"; {mismatch(model_shapes, ckpt_shapes, strict)} tensors have other shapes")
        + f"; {suggested_fix(diffs, explained, stored, origin, strict, release)} (full list in {full_list})")
