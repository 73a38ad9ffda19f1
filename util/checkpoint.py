"""Checkpoint save/load: atomic writes, safe (weights_only) loads, clear mismatch errors.

Files are written to a temp file in the target directory, flushed and fsynced,
then moved over the target with os.replace and the directory fsynced, so a kill
at any moment leaves either the old or the new complete file.

Loads always use torch.load(weights_only=True). Official DINO checkpoints pickle
an argparse.Namespace under 'args'; that one class is allow-listed. Anything
else that needs arbitrary unpickling is refused.
"""
import argparse
import json
import logging
import os
import pickle
import re
import tempfile
from typing import Any, Dict, List, Optional

import torch

logger = logging.getLogger("detr")

TMP_PREFIX = ".tmp-ckpt-"


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read or does not fit the model (one-line message)."""


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """The file needs arbitrary unpickling (code execution); refused."""


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # e.g. platforms that cannot open directories
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(obj: Dict[str, Any], path: str) -> None:
    """torch.save `obj` to `path` atomically (temp file + fsync + os.replace + dir fsync)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".pth", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


def args_to_dict(args) -> Dict[str, Any]:
    """Namespace/dict -> dict of JSON-able values (others become their str())."""
    items = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    out = {}
    for key, value in items.items():
        try:
            json.dumps(value)
            out[key] = value
        except (TypeError, ValueError):
            out[key] = str(value)
    return out


def _unpickler_reason(text: str) -> str:
    """The informative line of torch's weights_only error (e.g. 'Unsupported global: GLOBAL posix.system');
    its first lines are a generic paragraph. Falls back to the first line."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for line in lines:
        if "unsupported" in line.lower():
            return line
    return lines[0] if lines else ""


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Load a checkpoint dict safely; 'args' comes back as a plain dict.

    A bare state_dict (tensors only) is returned as {'model': state_dict}.
    Raises CheckpointError (unreadable/truncated/not a checkpoint) or
    UnsafeCheckpointError (needs arbitrary unpickling).
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = _unpickler_reason(str(e)) or type(e).__name__
        if "unsupported global" in str(e).lower():  # a class/function reference: could run code
            raise UnsafeCheckpointError(
                f"{path}: refused to load: it needs arbitrary unpickling, which can run code "
                f"({first}); only load checkpoints you trust after converting them") from None
        raise CheckpointError(f"{path}: not a readable checkpoint ({first})") from None
    except Exception as e:  # truncated zip, random bytes, EOF...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or not a torch file: "
                              f"{type(e).__name__}: {first})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    if "model" not in obj:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            obj = {"model": obj}
        else:
            raise CheckpointError(f"{path}: checkpoint has no 'model' entry (keys: {sorted(obj)[:10]})")
    if isinstance(obj.get("args"), argparse.Namespace):
        obj["args"] = args_to_dict(obj["args"])
    return obj


def strip_module_prefix(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Remove DDP's leading 'module.' from keys."""
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}


def _describe(items: List[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def load_model_state(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor], source: str = "checkpoint",
                     strict: bool = True, ignore: Optional[List[str]] = None):
    """Load `state_dict` into `model` after stripping 'module.' and dropping keys containing any `ignore` substring.

    strict=True: missing/unexpected keys or shape mismatches raise CheckpointError
    listing up to 10 of them and the total count. strict=False: shape
    mismatches still raise; missing/unexpected keys are logged and returned.
    """
    state_dict = strip_module_prefix(state_dict)
    if ignore:
        dropped = [k for k in state_dict if any(s in k for s in ignore)]
        state_dict = {k: v for k, v in state_dict.items() if k not in dropped}
        logger.info("%s: dropped %d keys matching %s", source, len(dropped), ignore)
    own = model.state_dict()
    mismatched = [f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state_dict.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {_describe(mismatched)}")
    if strict and missing:
        problems.append(f"{len(missing)} missing keys: {_describe(missing)}")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_describe(unexpected)}")
    if problems:
        raise CheckpointError(f"{source} does not fit this model (different config?): " + "; ".join(problems)
                              + "; use the config it was trained with, or --pretrain_model_path with "
                                "--finetune_ignore to skip those weights")
    result = model.load_state_dict(state_dict, strict=strict)
    if not strict:
        logger.info("%s: loaded non-strict; missing keys: %s; unexpected keys: %s",
                    source, _describe(result.missing_keys) or "none", _describe(result.unexpected_keys) or "none")
    return result


def remove_stale_temp_files(output_dir: str) -> List[str]:
    """Delete temp files left in output_dir by a save that was killed; returns their paths.

    Call only from the one process that writes checkpoints, before it starts saving.
    """
    if not output_dir or not os.path.isdir(output_dir):
        return []
    removed = []
    for name in sorted(os.listdir(output_dir)):
        if name.startswith(TMP_PREFIX):
            path = os.path.join(output_dir, name)
            os.remove(path)
            removed.append(path)
    return removed


_NUMBERED = re.compile(r"^checkpoint(\d{4})\.pth$")


def find_resume_checkpoint(output_dir: str) -> Optional[str]:
    """Newest readable checkpoint in output_dir: checkpoint.pth, then checkpointNNNN.pth newest first.

    Unreadable candidates are skipped with a warning. None if there is none.
    """
    if not output_dir or not os.path.isdir(output_dir):
        return None
    numbered = sorted((n for n in os.listdir(output_dir) if _NUMBERED.match(n)), reverse=True)
    for name in ["checkpoint.pth"] + numbered:
        path = os.path.join(output_dir, name)
        if not os.path.isfile(path):
            continue
        try:
            load_checkpoint(path)
        except CheckpointError as e:
            logger.warning("auto-resume: skipping %s", e)
            continue
        return path
    return None
