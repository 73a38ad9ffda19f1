"""Launcher environment parsing (util/dist.py); single-process helpers are no-ops."""
from types import SimpleNamespace

import pytest
import torch

from util import dist as d

ENV = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "MASTER_ADDR",
       "MASTER_PORT"]


@pytest.fixture
def clean_env(monkeypatch):
    for k in ENV:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def test_no_launcher_is_single_process(clean_env):
    args = SimpleNamespace(device="cpu", dist_url="env://")
    d.init_distributed_mode(args)
    assert (args.rank, args.world_size, args.distributed) == (0, 1, False)
    assert d.get_rank() == 0 and d.get_world_size() == 1 and d.is_main_process()
    assert d.all_gather_object(5) == [5]
    out = d.all_reduce_mean({"a": torch.tensor(2.0)})
    assert out["a"].item() == 2.0


def test_torchrun_env(clean_env):
    for k, v in dict(RANK="3", WORLD_SIZE="4", LOCAL_RANK="1").items():
        clean_env.setenv(k, v)
    assert d.read_launch_env() == {"rank": 3, "world_size": 4, "local_rank": 1}


def test_slurm_env_needs_master_addr(clean_env):
    for k, v in dict(SLURM_PROCID="2", SLURM_NTASKS="4", SLURM_LOCALID="0").items():
        clean_env.setenv(k, v)
    with pytest.raises(RuntimeError, match="MASTER_ADDR"):
        d.read_launch_env()
    clean_env.setenv("MASTER_ADDR", "localhost")
    clean_env.setenv("MASTER_PORT", "29500")
    assert d.read_launch_env() == {"rank": 2, "world_size": 4, "local_rank": 0}


@pytest.mark.parametrize("backend, expected", [("nccl", torch.device("cuda", 3)), ("gloo", torch.device("cpu"))])
def test_collective_device_follows_the_backend(monkeypatch, backend, expected):
    monkeypatch.setattr(d, "is_dist", lambda: True)
    monkeypatch.setattr(d.dist, "get_backend", lambda *a: backend)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert d.collective_device() == expected


def test_collective_device_without_a_group_is_the_cpu(clean_env):
    assert d.collective_device() == torch.device("cpu")


def test_single_process_helpers_are_copies(clean_env):
    x = torch.tensor([1.0, 2.0])
    out = d.all_reduce_sum(x)
    out += 1
    assert x.tolist() == [1.0, 2.0] and d.get_local_rank() == 0
    d.barrier()  # no group: returns at once
