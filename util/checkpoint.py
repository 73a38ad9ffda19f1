"""Checkpoint save/load: atomic writes, safe (weights_only) loads, integrity digests, clear mismatch errors.

Files are written to a temp file in the target directory, flushed and fsynced,
then moved over the target with os.replace and the directory fsynced, so a kill
at any moment leaves either the old or the new complete file.

Integrity: torch.load checks no checksum of tensor data (a flipped byte in a
weight loads silently), so save_checkpoint stores a SHA-256 of every tensor's
bytes (and of the other entries: epoch, args, ...) inside the checkpoint under
'_integrity'; it travels with the file under a plain cp. load_checkpoint
recomputes them and raises CheckpointError naming the first tensor that differs.
Files without a record (official DINO checkpoints, older files) load with one
info line saying they were not verified. `python -m util.checkpoint verify FILE...`
checks files on demand.

Loads always use torch.load(weights_only=True). Official DINO checkpoints pickle
an argparse.Namespace under 'args'; that one class is allow-listed. Anything
else that needs arbitrary unpickling is refused.
"""
import argparse
import hashlib
import json
import logging
import os
import pickle
import re
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from util.config_schema import same_value

logger = logging.getLogger("detr")

TMP_PREFIX = ".tmp-ckpt-"
INTEGRITY_KEY = "_integrity"


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


def _walk(obj: Any, prefix: str = "") -> Iterator[Tuple[str, Any]]:
    """(path, leaf) for every leaf of nested dicts/lists/tuples/Namespaces, in insertion order.

    Paths join keys with '/', e.g. 'model/backbone.0.body.conv1.weight', 'optimizer/state/3/exp_avg'.
    """
    if isinstance(obj, argparse.Namespace):
        obj = vars(obj)
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        yield prefix, obj
        return
    for key, value in items:
        yield from _walk(value, f"{prefix}/{key}" if prefix else str(key))


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 hex of dtype, shape and the raw bytes of `t` (any shape/device; hashed in memory order)."""
    t = t.detach()
    if t.layout != torch.strided:
        t = t.to_dense()
    t = t.cpu().resolve_conj().resolve_neg().contiguous()
    h = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}:".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # zero-copy byte view
    return h.hexdigest()


def _canonical(value: Any) -> str:
    """A stable text form of a non-tensor leaf (sets are sorted: their order varies between processes)."""
    if isinstance(value, (set, frozenset)):
        return "{" + ", ".join(sorted(repr(v) for v in value)) + "}"
    return repr(value)


def compute_integrity(obj: Dict[str, Any]) -> Dict[str, Any]:
    """The '_integrity' record of a checkpoint dict: SHA-256 per tensor path, and per top-level key
    one SHA-256 over that key's non-tensor leaves (epoch, args, optimizer param_groups, ...)."""
    tensors: Dict[str, torch.Tensor] = {}
    entries: Dict[str, Any] = {}
    for path, leaf in _walk({k: v for k, v in obj.items() if k != INTEGRITY_KEY}):
        if isinstance(leaf, torch.Tensor):
            tensors[path] = leaf
        else:
            top = path.split("/", 1)[0]
            entries.setdefault(top, hashlib.sha256()).update(f"{path}={_canonical(leaf)}\n".encode())
    # hashlib releases the GIL on large buffers, so threads hash tensors in parallel (~1.8 GB/s per core)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(tensor_digest, tensors.values()))
    return {"algo": "sha256", "tensors": dict(zip(tensors, digests)),
            "entries": {k: h.hexdigest() for k, h in entries.items()}}


def verify_integrity(obj: Dict[str, Any], record: Any, source: str) -> int:
    """Check `obj` (without its '_integrity' key) against `record`; returns the number of tensors verified.

    Raises CheckpointError naming `source` and the first tensor (in file order) or entry that differs.
    """
    fix = ("the file changed after it was saved (bad disk, partial or faulty copy); "
           "use another copy or an older checkpoint")
    if not (isinstance(record, dict) and record.get("algo") == "sha256" and isinstance(record.get("tensors"), dict)
            and isinstance(record.get("entries"), dict)):
        raise CheckpointError(f"{source}: integrity check failed: the '{INTEGRITY_KEY}' record is unreadable; {fix}")
    actual = compute_integrity(obj)
    for path, digest in actual["tensors"].items():
        if record["tensors"].get(path) != digest:
            what = "differs from its recorded SHA-256" if path in record["tensors"] else "has no recorded SHA-256"
            raise CheckpointError(f"{source}: integrity check failed: tensor '{path}' {what}; {fix}")
    for path in record["tensors"]:
        if path not in actual["tensors"]:
            raise CheckpointError(f"{source}: integrity check failed: tensor '{path}' is recorded but missing; {fix}")
    for key in sorted(set(actual["entries"]) | set(record["entries"])):
        if actual["entries"].get(key) != record["entries"].get(key):
            raise CheckpointError(f"{source}: integrity check failed: the non-tensor values under '{key}' differ "
                                  f"from their recorded SHA-256; {fix}")
    return len(actual["tensors"])


def save_checkpoint(obj: Dict[str, Any], path: str) -> None:
    """torch.save `obj` plus its '_integrity' record to `path` atomically
    (temp file + fsync + os.replace + dir fsync). `obj` itself is not modified."""
    obj = {**{k: v for k, v in obj.items() if k != INTEGRITY_KEY}, INTEGRITY_KEY: compute_integrity(obj)}
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
    """Load a checkpoint dict safely and verify its '_integrity' record; 'args' comes back as a plain dict.

    The record is removed from the returned dict. A file without one loads with one info line
    ("not verified"). A bare state_dict (tensors only) is returned as {'model': state_dict}.
    Raises CheckpointError (unreadable/truncated/not a checkpoint, or integrity mismatch) or
    UnsafeCheckpointError (needs arbitrary unpickling).
    """
    obj, verified = _load_verified(path)
    if verified is None:
        logger.info("%s: no integrity digest (an official DINO file or saved before digests were added): "
                    "loaded without verification", path)
    return obj


def _load_verified(path: str) -> Tuple[Dict[str, Any], Optional[int]]:
    """(checkpoint dict, number of tensors verified, or None when the file has no integrity record)."""
    obj = _torch_load(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    verified = None
    if INTEGRITY_KEY in obj:
        record = obj.pop(INTEGRITY_KEY)
        verified = verify_integrity(obj, record, path)
    if "model" not in obj:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            obj = {"model": obj}
        else:
            raise CheckpointError(f"{path}: checkpoint has no 'model' entry (keys: {sorted(obj)[:10]})")
    if isinstance(obj.get("args"), argparse.Namespace):
        obj["args"] = args_to_dict(obj["args"])
    return obj, verified


def _torch_load(path: str) -> Any:
    """torch.load(weights_only=True) with every failure turned into a one-line CheckpointError."""
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


def misfit_error(err: CheckpointError, path: str, saved: Any, current: Dict[str, Any], model_keys: Sequence[str],
                 strict: bool = True, fix: Optional[str] = None, full_list: str = "info.txt",
                 origin: Optional[Tuple[str, str]] = None) -> CheckpointError:
    """A short CheckpointError for weights that do not fit (`err` is load_model_state's long one; the
    caller logs it): the config the checkpoint was trained with (its stored args), the one in use
    (current['config_file']), the first three differing `model_keys` (those that change the model's
    tensors), how many tensors have other shapes, and `fix` (default: use -c <its config>). A file
    without a stored config that the caller recognised (`origin`: what it is, the config it loads into,
    e.g. an official Deformable DETR release, models.checkpoint_origin) is named with that config. Shared
    by main.py and the tools."""
    saved = saved if isinstance(saved, dict) else {}
    diffs = [(k, saved[k], current[k]) for k in model_keys
             if k in saved and k in current and not same_value(current[k], saved[k])]
    shown = ", ".join(f"{k}={old!r} (now {new!r})" for k, old, new in diffs[:3])
    count = re.search(r"(\d+) shape mismatches", str(err))
    if "config_file" in saved:
        trained, known = saved["config_file"], saved["config_file"]
    elif origin is not None:
        trained, known = f"{origin[1]} ({origin[0]})", origin[1]
    else:
        trained, known = "an unknown config (no config stored in the checkpoint)", None
    if fix is None:
        fix = (f"use -c {known}" + (" with the same --options" if diffs and "config_file" in saved else "")
               if known else "use the config it was trained with")
        if not strict:
            fix += ", or --finetune_ignore SUBSTRING to skip those weights"
    return CheckpointError(
        f"{path} does not fit this model: it was trained with {trained}, this run uses {current.get('config_file')}"
        + (f"; differing keys: {shown}" + (f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else "") if diffs else "")
        + (f"; {count.group(1)} tensors have other shapes" if count else "")
        + f"; {fix} (full list in {full_list})")


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

    Unreadable candidates and ones that fail their integrity check are skipped with a warning.
    None if there is none. Logs nothing about verification (see load_resume_checkpoint)."""
    found = _newest_valid(output_dir)
    return found[0] if found else None


def load_resume_checkpoint(output_dir: str) -> Optional[Tuple[str, Dict[str, Any]]]:
    """(path, checkpoint) of find_resume_checkpoint's choice, read once (a DINO checkpoint is 0.5 GB),
    with load_checkpoint's "not verified" line for a file without a digest; None if there is none."""
    found = _newest_valid(output_dir)
    if found and found[2] is None:
        logger.info("%s: no integrity digest: loaded without verification", found[0])
    return found[:2] if found else None


def _newest_valid(output_dir: str) -> Optional[Tuple[str, Dict[str, Any], Optional[int]]]:
    if not output_dir or not os.path.isdir(output_dir):
        return None
    numbered = sorted((n for n in os.listdir(output_dir) if _NUMBERED.match(n)), reverse=True)
    for name in ["checkpoint.pth"] + numbered:
        path = os.path.join(output_dir, name)
        if not os.path.isfile(path):
            continue
        try:
            obj, verified = _load_verified(path)
        except CheckpointError as e:
            logger.warning("auto-resume: skipping %s", e)
            continue
        return path, obj, verified
    return None


def verify_files(paths: List[str], require_digest: bool = False) -> int:
    """Print one line per file (ok / not verified / FAILED); 0 if every file passed, else 1.

    A readable file without a digest passes unless `require_digest`.
    """
    status = 0
    for path in paths:
        try:
            obj, verified = _load_verified(path)
        except CheckpointError as e:
            print(f"FAILED {' '.join(str(e).split())}")
            status = 1
            continue
        if verified is None:
            print(f"{'FAILED' if require_digest else 'not verified'} {path}: readable, but it has no integrity "
                  f"digest (an official DINO file or saved before digests were added)")
            status = 1 if require_digest else status
        else:
            epoch = f", epoch {obj['epoch']}" if "epoch" in obj else ""
            print(f"ok {path}: {verified} tensors match their SHA-256{epoch}")
    return status


def main(argv: Optional[List[str]] = None) -> int:
    """`python -m util.checkpoint verify FILE...`"""
    parser = argparse.ArgumentParser(prog="python -m util.checkpoint",
                                     description="Check checkpoint files against their integrity digests.")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="verify FILE... (exit 0: all ok, 1: any failed), one line per file")
    verify.add_argument("files", nargs="+", metavar="FILE")
    verify.add_argument("--require-digest", action="store_true",
                        help="count a readable file without a digest as failed")
    args = parser.parse_args(argv)
    return verify_files(args.files, require_digest=args.require_digest)


if __name__ == "__main__":
    from util.checkpoint import main as _main  # the importable module, not this __main__ copy
    sys.exit(_main())
