"""Shared fixtures for the msda op tests: one compiled-kernel load (JIT build) per session.

No silent skips on a GPU machine: with a CUDA device visible, a kernel that fails to build or
load fails the tests that need it, with the build error. Without one, the CUDA tests skip,
and the CPU tests skip only when the CPU kernel cannot be built (no compiler).
"""
import shutil

import pytest
import torch

from models.dino.ops import _build, _library


def require_kernels(device_type: str):
    """torch.ops.msda with a `device_type` ("cpu" or "cuda") kernel, else pytest skip / fail (see above)."""
    gpu = torch.cuda.is_available()
    if device_type == "cuda" and not gpu:
        pytest.skip("needs a CUDA device")
    problem = _build.missing_kernel_reason(device_type)
    if problem is not None:
        if gpu:
            pytest.fail(f"a CUDA device is visible but the msda {device_type} kernel is unusable: {problem}",
                        pytrace=False)
        pytest.skip(problem)
    _library.register()
    return torch.ops.msda


@pytest.fixture(scope="session")
def compiled():
    """torch.ops.msda with the CPU kernel."""
    return require_kernels("cpu")


@pytest.fixture(scope="session")
def compiled_cuda():
    """torch.ops.msda with the CUDA kernel (skips without a GPU, fails when it does not build there)."""
    return require_kernels("cuda")


@pytest.fixture(scope="session")
def emu():
    """torch.ops.msda_emu: the CUDA kernels run on the CPU under the SIMT emulator (built on first use)."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler for the msda emulator build")
    from models.dino.ops import _emu

    ops = _emu.load()  # a failed build fails the tests, with the compiler's error
    ops.set_seed(0)
    return ops


def make_inputs(n=2, lq=5, m=2, d=4, shapes=((6, 4), (3, 2), (1, 1)), p=2, dtype=torch.float64, seed=0,
                lo=-0.1, hi=1.1, loc_heads=None):
    """Random op inputs; locations drawn in [lo, hi] so some fall outside the maps."""
    g = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    areas = spatial_shapes.prod(1)
    level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    s, nl = int(areas.sum()), len(shapes)
    mh = loc_heads or m
    value = torch.randn(n, s, m, d, generator=g, dtype=dtype)
    loc = torch.rand(n, lq, mh, nl, p, 2, generator=g, dtype=dtype) * (hi - lo) + lo
    attn = torch.rand(n, lq, mh, nl, p, generator=g, dtype=dtype)
    attn = attn / attn.flatten(-2).sum(-1)[..., None, None]
    return value, spatial_shapes, level_start_index, loc, attn
