"""Fixtures shared by the test packages."""
import os

import pytest
import torch

from small_disk import small_disk_at, unmount
from tiny_configs import TINY_SWIN

# main.py and the tools choose their thread count from the free cores (util/cpu_threads.py); the tests fix it
# to torch's default, so that two runs in one test compare bitwise whatever else the machine runs
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seeded_global_rng():
    """Every test starts from the same global RNG state, so a test's random inputs (and whether a
    tolerance holds for them) do not depend on which tests ran before it or how CI splits the run."""
    torch.manual_seed(0)


@pytest.fixture
def tiny_swin_spec(monkeypatch):
    """swin_T_224_1k at the fixture's width (TINY_SWIN), so a whole DINO built in this test holds the
    fixture's backbone."""
    from models.common.backbones.table import BACKBONES
    monkeypatch.setitem(BACKBONES, "swin_T_224_1k", BACKBONES["swin_T_224_1k"].resized(**TINY_SWIN))


@pytest.fixture(params=["tmpfs", "hook"])
def small_disk(tmp_path, monkeypatch, request):
    """A folder with 512 KiB of room (tests/small_disk.py): a real tmpfs where the machine lets the test
    mount one, else (and always for the 'hook' variant) a write hook modelling the same capacity."""
    small = small_disk_at(str(tmp_path / "small_disk"), request.param, monkeypatch)
    yield small
    unmount(small)
