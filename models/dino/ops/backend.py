"""Which implementation of multi-scale deformable attention runs, per device.

Order of authority: `set_backend(name)` > environment variable MSDA_BACKEND > "auto".
  auto      compiled kernel for the tensor's device if it loads (installed or JIT-built), else pure PyTorch
  compiled  compiled kernel or a one-line RuntimeError saying why and how to build it
  pytorch   always the grid_sample reference
One message per device and process says what was chosen and why (a UserWarning when
auto falls back to PyTorch, a logging INFO line otherwise).
The first use of a compiled kernel on a device type in selfcheck.CHECKED_ON_FIRST_USE (CUDA)
compares it with the reference on a small fixed problem (cached per machine, build and GPU):
on a mismatch auto falls back to PyTorch with a one-line warning naming the largest error,
and a forced "compiled" raises.
"""
import logging
import os
import warnings
from typing import Callable, Dict, Optional

import torch
from torch import Tensor

from . import _build, _library, selfcheck

BACKENDS = ("auto", "compiled", "pytorch")
log = logging.getLogger(__name__)

_forced: Optional[str] = None          # set by set_backend
_resolved: Dict[str, str] = {}          # device type -> "compiled" | "pytorch"
_reasons: Dict[str, str] = {}           # device type -> why
_announced: set = set()

# value dtypes each compiled kernel takes natively; others are cast to fp32 around the call
_KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.float64, torch.bfloat16),
    "cuda": (torch.float32, torch.float64, torch.bfloat16, torch.float16),
}


def requested() -> tuple:
    """(backend name, where it came from)."""
    if _forced is not None:
        return _forced, "set_backend()"
    env = os.environ.get("MSDA_BACKEND")
    if env:
        if env not in BACKENDS:
            raise ValueError(f"MSDA_BACKEND={env!r} is not one of {', '.join(BACKENDS)}; unset it or pick one")
        return env, "MSDA_BACKEND"
    return "auto", "default"


def set_backend(name: Optional[str]) -> None:
    """Force "compiled", "pytorch" or "auto" (None = back to MSDA_BACKEND / auto) for all later calls.

    Forcing "compiled" loads the kernels now and raises if the CPU kernel is unavailable.
    """
    global _forced
    if name is not None and name not in BACKENDS:
        raise ValueError(f"msda backend {name!r} is not one of {', '.join(BACKENDS)} (config key msda_backend)")
    _forced = name
    _resolved.clear()
    _reasons.clear()
    _announced.clear()
    if name == "compiled":
        _resolve("cpu")


def _compiled_status(device_type: str) -> Optional[str]:
    """None when the compiled kernel can run on `device_type`, else the reason it cannot."""
    if device_type not in _KERNEL_DTYPES:
        return f"no compiled kernel for device type {device_type!r}"
    problem = _build.missing_kernel_reason(device_type)
    if problem is None:
        _library.register()
    return problem


def _self_check_failure(device_type: str) -> Optional[str]:
    """None when the compiled kernel passed its first-use self-check (or is not checked), else why not."""
    if device_type not in selfcheck.CHECKED_ON_FIRST_USE:
        return None
    result = selfcheck.cached_check(device_type)
    if result.ok:
        log.info(result.line())
        return None
    return (f"the compiled kernel failed its self-check on {result.device}: largest error {result.max_error:.2e} "
            f"in {result.where}, tolerance {result.tolerance:.0e}; `python -m models.dino.ops --check` reruns it")


@torch.compiler.disable
def _resolve(device_type: str) -> str:
    name, origin = requested()
    hint = _build.BUILD_HINT
    if name == "pytorch":
        choice, why = "pytorch", f"forced by {origin}"
    else:
        problem = _compiled_status(device_type)
        if problem is None:
            problem = _self_check_failure(device_type)
            hint = "please report it with the output of `python -m models.dino.ops --check`" if problem else hint
        if problem is None:
            choice, why = "compiled", f"{_build.load()}" + (f", forced by {origin}" if name == "compiled" else "")
        elif name == "compiled":
            raise RuntimeError(f"msda: backend 'compiled' forced by {origin} but {problem}; {hint}")
        else:
            choice, why = "pytorch", problem
    _resolved[device_type] = choice
    _reasons[device_type] = why
    if device_type not in _announced:
        _announced.add(device_type)
        msg = f"msda: multi-scale deformable attention on {device_type} uses the {choice} backend ({why})"
        if choice == "pytorch" and name == "auto":
            faster = "" if "self-check" in why else f"; the compiled kernel is faster, {hint}"
            warnings.warn(msg + faster, stacklevel=3)
        else:
            log.info(msg)
    return choice


def backend_info() -> dict:
    """What runs on cpu and cuda and why (loads or JIT-builds the kernels if needed)."""
    name, origin = requested()
    info = {"requested": name, "requested_by": origin, "torch": torch.__version__, "torch_cuda": torch.version.cuda}
    for dev in ("cpu", "cuda"):
        if dev == "cuda" and not torch.cuda.is_available():
            info[dev] = {"backend": None, "reason": "no CUDA device visible"}
            continue
        try:
            info[dev] = {"backend": _resolved.get(dev) or _resolve(dev), "reason": _reasons[dev]}
        except RuntimeError as exc:
            info[dev] = {"backend": None, "reason": str(exc)}
    return info


def dispatch(reference: Callable, value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
             sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """Run the chosen backend; `reference` is the pure-PyTorch implementation."""
    device_type = value.device.type
    choice = _resolved.get(device_type) or _resolve(device_type)
    n_loc_heads, n_heads = sampling_locations.shape[2], value.shape[2]
    if choice == "pytorch":
        if n_loc_heads != n_heads:  # EMCA layout: value head h reads location head h % Ml
            if n_loc_heads == 0 or n_heads % n_loc_heads:
                raise ValueError(f"msda: value has {n_heads} heads, locations {n_loc_heads}; they must be equal "
                                 "or the location heads must divide the value heads")
            reps = n_heads // n_loc_heads
            sampling_locations = sampling_locations.repeat(1, 1, reps, 1, 1, 1)
            attention_weights = attention_weights.repeat(1, 1, reps, 1, 1)
        dtype = torch.promote_types(value.dtype, torch.promote_types(sampling_locations.dtype, attention_weights.dtype))
        out = reference(value.to(dtype), spatial_shapes, level_start_index,
                        sampling_locations.to(dtype), attention_weights.to(dtype))
        return out.to(value.dtype)
    out_dtype = value.dtype
    if value.dtype not in _KERNEL_DTYPES[device_type]:
        value = value.float()  # e.g. fp16 on CPU: compute in fp32, cast the result back
    acc = torch.float64 if value.dtype == torch.float64 else torch.float32
    # locations and weights stay in the accumulation type (fp16 locations would be off by ~0.1 px)
    out = torch.ops.msda.ms_deform_attn_forward(value, spatial_shapes, level_start_index,
                                                sampling_locations.to(acc), attention_weights.to(acc))
    return out.to(out_dtype)
