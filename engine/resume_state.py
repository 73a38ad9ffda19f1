"""Mid-epoch checkpoints: when one is due, and the position in the epoch it records, so that a restart
continues that epoch exactly where it stopped.

A mid-epoch checkpoint is checkpoint.pth with one more entry, 'position' (`Position`). Its 'epoch' is
the last *completed* epoch (-1 during the first), as in every checkpoint, so a reader that knows nothing
of positions stays right. On resume (engine/run.resume) the epoch continues at the recorded iteration:

* the sampler draws the epoch's order from the same seed and skips the batches already done, and
  each image's augmentation is seeded by (seed, epoch, image index) (datasets/loaders.py);
* every rank's python / NumPy / torch (and CUDA) RNG state is restored (the model's own draws:
  denoising noise, dropout);
* model, optimizer, lr scheduler (its iteration count, for OneCycleLR), EMA and GradScaler come
  from the checkpoint as after an epoch;
* the epoch's running sums continue (engine.loops.EpochTally), so its log.txt line is the same too.

So on the CPU the final weights equal an uninterrupted run's bit for bit, with one or more processes.
"""
import random
import time
from dataclasses import asdict, dataclass
from typing import Callable, List, Tuple

import numpy as np
import torch

from util.config_schema import KeyGroup, float_key, int_key

MID_EPOCH_KEYS = KeyGroup("mid_epoch", "mid-epoch checkpoints (resume in the middle of an epoch)", {
    "checkpoint_every_iters": int_key(
        "also write checkpoint.pth every this many iterations within an epoch, with the position in the epoch, so a "
        "restart continues from there (0: off)", 0),
    "checkpoint_every_minutes": float_key(
        "also write checkpoint.pth when this many minutes of training passed since the last checkpoint, with the "
        "position in the epoch (0: off)", 0),
})


@dataclass
class Position:
    """Where in epoch `epoch` a mid-epoch checkpoint was written: `iteration` iterations done, by
    `world_size` processes of `batch_size` images; `ranks[r]`: rank r's {'rng': rng_state(), 'tally':
    EpochTally.state()} (the epoch's running sums; the skipped image ids differ between ranks)."""
    epoch: int
    iteration: int
    world_size: int
    batch_size: int
    ranks: List[dict]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Position":
        return cls(int(d["epoch"]), int(d["iteration"]), int(d["world_size"]), int(d["batch_size"]), list(d["ranks"]))

    def start_for(self, world_size: int, batch_size: int) -> Tuple[int, bool]:
        """(first iteration to run, whether the RNG states apply) for a run of `world_size` processes of
        `batch_size` images. Another layout cannot replay the same batches: it starts after as many images
        as were done (rounded down) and keeps its own seeds."""
        if (world_size, batch_size) == (self.world_size, self.batch_size):
            return self.iteration, True
        return self.iteration * self.world_size * self.batch_size // (world_size * batch_size), False


def rng_state() -> dict:
    """This process's python, NumPy, torch and (current device's) CUDA RNG states, as tensors and plain values
    (a checkpoint is loaded with weights_only=True, which refuses NumPy arrays)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    # the current device only (each process trains on one): get_rng_state_all would touch every visible GPU
    cuda = [torch.cuda.get_rng_state()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {"python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)},
            "torch": torch.get_rng_state(), "cuda": list(cuda)}


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() returned (the CUDA state onto this process's current device)."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["mt"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"][0])  # this process's device


class CheckpointClock:
    """Whether a mid-epoch checkpoint is due after an iteration: every `every_iters` iterations of the epoch
    and/or once `every_minutes` passed since the last checkpoint (or since this process started training)."""

    def __init__(self, every_iters: int, every_minutes: float, clock: Callable[[], float] = time.monotonic):
        self.every_iters, self.every_s, self.clock = every_iters, every_minutes * 60, clock
        self.last = clock()

    def due(self, done: int) -> bool:
        by_count = self.every_iters > 0 and done % self.every_iters == 0
        by_time = self.every_s > 0 and self.clock() - self.last >= self.every_s
        return by_count or by_time

    def restart(self) -> None:
        self.last = self.clock()
