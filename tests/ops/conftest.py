"""Shared fixtures for the msda op tests: one compiled-kernel load (JIT build) per session."""
import pytest
import torch

from models.dino.ops import _build, _library


@pytest.fixture(scope="session")
def compiled():
    """torch.ops.msda with the kernels loaded; skips when they cannot be built here."""
    if _build.load() is None:
        pytest.skip(f"compiled msda kernels unavailable: {_build.load_error()}")
    _library.register()
    return torch.ops.msda


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
