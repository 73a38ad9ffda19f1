"""Distributed setup and small collective helpers.

The process group is created from torchrun's environment (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/MASTER_PORT) or from SLURM's (SLURM_PROCID,
SLURM_NTASKS, SLURM_LOCALID, with MASTER_ADDR/MASTER_PORT set by the job
script). Without either, the run is single-process and every helper here is a
no-op, so the same code path serves both cases.

Every collective of the project goes through this module (tests/test_collectives.py
checks the source tree): a collective's tensors must live on the process group's
device, the current CUDA device under NCCL (which rejects CPU tensors) and the CPU
under gloo. The helpers move their inputs there and the results back.

A rank that dies alone: the collectives wait at most collective_timeout_minutes, and a RankWatch
(util/rank_watch.py) names the gone rank within about rank_silence_s, so the others stop with one
line instead of waiting forever (`leave`, `explain_failure`).
"""
import datetime
import os
import uuid
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist

from util.config_schema import KeyGroup, float_key
from util.rank_watch import RankWatch, wait_budget

DISTRIBUTED_KEYS = KeyGroup("distributed", "distributed runs: a rank that dies or hangs", {
    "collective_timeout_minutes": float_key(
        "a collective that waits longer than this for a peer fails (torch's process-group timeout; under NCCL its "
        "watchdog then ends the process)", 0, low_open=True),
    "rank_silence_s": float_key(
        "a rank whose heartbeat has been silent this long is named gone and every other rank stops with a line "
        "naming it (util/rank_watch.py)", 0, low_open=True),
})

_watch: Optional[RankWatch] = None


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def get_local_rank() -> int:
    """This process's rank within its node (LOCAL_RANK / SLURM_LOCALID); 0 when not distributed."""
    return read_launch_env()["local_rank"] if is_dist() else 0


def collective_device() -> torch.device:
    """The device a collective's tensors must be on: the current CUDA device under NCCL, else the CPU."""
    if is_dist() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (NCCL: on this process's GPU, so no device has to be guessed)."""
    if not is_dist():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"environment variable {name}={value!r} must be an integer") from None


def read_launch_env() -> Dict[str, int]:
    """(rank, world_size, local_rank) from torchrun or SLURM variables; world_size 1 if neither."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return {"rank": _env_int("RANK"), "world_size": _env_int("WORLD_SIZE"),
                "local_rank": _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else 0}
    if "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise RuntimeError(f"SLURM launch with SLURM_NTASKS>1 needs {name} in the environment "
                                   f"(e.g. export MASTER_ADDR=$(hostname) MASTER_PORT=29500 in the job script)")
        return {"rank": _env_int("SLURM_PROCID"), "world_size": _env_int("SLURM_NTASKS"),
                "local_rank": _env_int("SLURM_LOCALID") if "SLURM_LOCALID" in os.environ else 0}
    return {"rank": 0, "world_size": 1, "local_rank": 0}


def init_distributed_mode(args) -> None:
    """Set args.distributed/rank/world_size/local_rank and create the process group if needed.

    NCCL is used when args.device is CUDA (each process pinned to its LOCAL_RANK
    GPU), gloo on CPU.
    """
    env = read_launch_env()
    args.rank, args.world_size, args.local_rank = env["rank"], env["world_size"], env["local_rank"]
    args.distributed = args.world_size > 1
    if not args.distributed:
        return
    use_cuda = str(args.device).startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(args.local_rank)
        args.device = f"cuda:{args.local_rank}"
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method=args.dist_url,
                            world_size=args.world_size, rank=args.rank,
                            timeout=datetime.timedelta(minutes=args.collective_timeout_minutes))
    barrier()
    _start_watch(args.rank_silence_s)


def _start_watch(silence_s: float) -> None:
    """A RankWatch on the process group's store, its keys under a prefix of this launch (see rank_watch)."""
    global _watch
    default_store = getattr(dist.distributed_c10d, "_get_default_store", None)
    if default_store is None:  # a torch without it: rely on the collective timeout alone
        return
    prefix = "rank_watch/" + all_gather_object(uuid.uuid4().hex)[0]
    _watch = RankWatch(default_store(), get_rank(), get_world_size(), silence_s, prefix).start()


# words of the errors a collective raises when a peer is gone (gloo: "Connection reset/closed by peer",
# "Timed out waiting ... for recv"; NCCL: "NCCL error", DistBackendError)
_COLLECTIVE_FAILURE_WORDS = ("peer", "connection", "timed out", "broken pipe", "nccl", "gloo", "socket")


def explain_failure(err: BaseException) -> BaseException:
    """The exception to raise for `err` on this rank: a one-line PeerLostError naming the rank that is gone
    (waiting up to about rank_silence_s when `err` looks like a collective that lost its peer), else `err`."""
    if _watch is None:
        return err
    text = f"{type(err).__name__} {err}".lower()
    collective = isinstance(err, getattr(dist, "DistError", ())) or any(w in text for w in _COLLECTIVE_FAILURE_WORDS)
    lost = _watch.explain(wait_budget(_watch.silence_s) if collective else 0.0)
    return lost or err


def leave(reason: Optional[str] = None) -> None:
    """Tell the other ranks this one stops (`reason`: its one-line error; None: it finished) and stop the watch."""
    global _watch
    if _watch is not None:
        _watch.leave(reason)
        _watch = None


def cleanup() -> None:
    """Stop the rank watch and destroy the process group if one exists (call in a finally block)."""
    leave()
    if is_dist():
        dist.destroy_process_group()


def any_rank(flags: Sequence[bool]) -> List[bool]:
    """Element-wise OR of `flags` over ranks (the same length on every rank), so every rank takes the same
    decision (one small collective; none without a process group)."""
    if not is_dist():
        return [bool(f) for f in flags]
    buf = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32, device=collective_device())
    dist.all_reduce(buf, op=dist.ReduceOp.MAX)
    return [bool(v) for v in buf.tolist()]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of `tensor` (any shape, same shape on every rank) over ranks.

    Returns a new detached tensor on the input's device and of its dtype; the input is not modified.
    """
    if not is_dist():
        return tensor.detach().clone()
    buf = tensor.detach().to(collective_device(), copy=True)
    dist.all_reduce(buf)
    return buf.to(tensor.device)


def all_reduce_mean(values: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Average a dict of scalar tensors over ranks (same keys on all ranks).

    Returns detached float32 tensors on each input's device (input dtypes kept without a process group).
    """
    if not is_dist() or not values:
        return {k: v.detach() for k, v in values.items()}
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float().to(collective_device()) for k in keys])
    dist.all_reduce(stacked)
    stacked /= get_world_size()
    return {k: stacked[i].to(values[k].device) for i, k in enumerate(keys)}


def all_gather_object(obj: Any) -> List[Any]:
    """List of `obj` from every rank (a one-element list when not distributed)."""
    if not is_dist():
        return [obj]
    out: List[Any] = [None] * get_world_size()
    # torch pickles into a tensor on torch.cuda.current_device() under NCCL (set by init_distributed_mode)
    dist.all_gather_object(out, obj)
    return out
