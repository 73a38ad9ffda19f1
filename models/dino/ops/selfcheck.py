"""Self-check of a compiled msda kernel against the pure-PyTorch reference, on a small fixed problem.

`backend` runs it the first time a process uses the compiled kernel of a device type in
`CHECKED_ON_FIRST_USE` (CUDA), and falls back to PyTorch when it fails. The result is cached
per machine in the build cache folder (<cache>/<cpu|cuda>/selfcheck/<build id>-<device>.json),
keyed by the loaded library's hash and the device's name, so a machine checks each build on
each kind of GPU once. `python -m models.dino.ops --check` runs it on demand.

The problem covers the kernel's paths: 5 channels per head (8-lane groups, 4 tasks per warp,
a part-filled last warp), 32 channels with the EMCA head layout (value heads 2x the location
heads), points inside, on and outside the borders; forward and backward, fp32 and bf16 value.
Errors are relative to the reference's largest magnitude (1 at least).
"""
import json
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional

import torch

from . import _build
from .reference import ms_deform_attn_pytorch

CHECKED_ON_FIRST_USE = ("cuda",)
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2}
# (name, value heads, location heads, channels per head)
CASES = [("d=5", 2, 2, 5), ("emca d=32", 4, 2, 32)]
_process_cache: Dict[str, "Result"] = {}


@dataclass
class Result:
    device: str                # e.g. "cuda (NVIDIA H200)"
    ok: bool
    max_error: float           # the largest error over every output, case and dtype, relative
    where: str                 # which output, case and dtype it is in
    tolerance: float           # that output's tolerance
    errors: Dict[str, float] = field(default_factory=dict)
    cached: bool = False

    def line(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        return (f"msda self-check on {self.device}: {verdict}, largest error {self.max_error:.2e} in {self.where} "
                f"(tolerance {self.tolerance:.0e})" + (", cached result" if self.cached else ""))


def device_name(device_type: str) -> str:
    if device_type == "cuda":
        return torch.cuda.get_device_name(torch.cuda.current_device())
    return platform.machine() or "cpu"


def _inputs(value_heads: int, loc_heads: int, d: int):
    """Fixed inputs on the CPU in fp64 (seeded); locations in [-0.1, 1.1], some exactly on 0 and 1."""
    g = torch.Generator().manual_seed(1234 + d)
    shapes = torch.tensor([[6, 5], [3, 2], [1, 1]])
    starts = torch.tensor([0, 30, 36])
    n, lq, p = 2, 5, 2
    value = torch.randn(n, 37, value_heads, d, generator=g, dtype=torch.float64)
    loc = torch.rand(n, lq, loc_heads, 3, p, 2, generator=g, dtype=torch.float64) * 1.2 - 0.1
    loc[0, 0, 0, :, 0] = 0.0
    loc[0, 1, 0, :, 1] = 1.0
    attn = torch.rand(n, lq, loc_heads, 3, p, generator=g, dtype=torch.float64)
    attn = attn / attn.flatten(-2).sum(-1)[..., None, None]
    grad_out = torch.randn(n, lq, value_heads * d, generator=g, dtype=torch.float64)
    return value, shapes, starts, loc, attn, grad_out


def _reference(value, shapes, starts, loc, attn, grad_out):
    """Output and gradients in fp64 on the CPU, the location heads repeated for the EMCA layout."""
    k = value.shape[2] // loc.shape[2]
    leaves = [t.clone().requires_grad_() for t in (value, loc, attn)]
    out = ms_deform_attn_pytorch(leaves[0], shapes, starts, leaves[1].repeat(1, 1, k, 1, 1, 1),
                                 leaves[2].repeat(1, 1, k, 1, 1))
    return [out.detach()] + list(torch.autograd.grad(out, leaves, grad_out))


def run_check(device_type: str, forward: Optional[Callable] = None, backward: Optional[Callable] = None) -> Result:
    """Compare `forward` / `backward` (default: torch.ops.msda's) on `device_type` with the reference."""
    forward = forward or torch.ops.msda.ms_deform_attn_forward
    backward = backward or torch.ops.msda.ms_deform_attn_backward
    device = torch.device(device_type)
    errors, tols = {}, {}
    for case, value_heads, loc_heads, d in CASES:
        value, shapes, starts, loc, attn, grad_out = _inputs(value_heads, loc_heads, d)
        for dtype, tol in TOLERANCE.items():
            v = value.to(dtype)  # the reference sees the same rounded values
            ref = _reference(v.double(), shapes, starts, loc, attn, grad_out.to(dtype).double())
            args = [v.to(device), shapes.to(device), starts.to(device), loc.float().to(device),
                    attn.float().to(device)]
            try:
                with torch.no_grad():
                    got = [forward(*args)] + list(backward(*args, grad_out.to(dtype).to(device)))
            except RuntimeError as exc:  # e.g. a CUDA launch failure: as bad as a wrong result
                msg = str(exc).strip().splitlines()
                return Result(f"{device_type} ({device_name(device_type)})", False, float("inf"),
                              f"the kernel call ({case}, {dtype}): {msg[0] if msg else type(exc).__name__}",
                              TOLERANCE[dtype])
            for name, a, r in zip(("output", "grad_value", "grad_sampling_locations", "grad_attention_weights"),
                                  got, ref):
                key = f"{name} ({case}, {str(dtype).replace('torch.', '')})"
                err = (a.detach().double().cpu() - r).abs().max().item() / max(1.0, r.abs().max().item())
                errors[key] = err if err == err else float("inf")  # NaN counts as the worst error
                tols[key] = tol
    where = max(errors, key=lambda k: errors[k] / tols[k])
    label = f"{device_type} ({device_name(device_type)})"
    return Result(label, all(errors[k] <= tols[k] for k in errors), errors[where], where, tols[where], errors)


def cache_path(device_type: str) -> Path:
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in device_name(device_type))
    return _build.cache_dir(device_type == "cuda") / "selfcheck" / f"{_build.build_id()}-{name}.json"


def save(device_type: str, result: Result) -> None:
    """Write the result to the machine cache (atomically: processes may start together)."""
    path = cache_path(device_type)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({k: v for k, v in asdict(result).items() if k != "cached"}, indent=1))
        os.replace(tmp, path)
    except OSError:  # a read-only cache only costs a re-check next time
        pass


def cached_check(device_type: str) -> Result:
    """The check's result for the loaded kernel on this device: from this process, the machine
    cache, or a fresh run (then cached)."""
    path = cache_path(device_type)
    key = str(path)
    if key in _process_cache:
        return _process_cache[key]
    result = None
    if path.is_file():
        try:
            result = Result(**json.loads(path.read_text()), cached=True)
        except (ValueError, TypeError, OSError):
            result = None  # unreadable or from another version: check again
    if result is None:
        result = run_check(device_type)
        save(device_type, result)
    _process_cache[key] = result
    return result
