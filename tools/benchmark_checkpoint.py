"""The cost of a mid-epoch checkpoint at DINO-4scale size, next to an epoch checkpoint, in one run.

    python tools/benchmark_checkpoint.py [-c CONFIG] [--options K=V ...] [--repeats 5] [--ranks 8]
                                         [--interval_minutes 15] [--dir FOLDER]

Builds the config's model (config/DINO/DINO_4scale.py by default; random weights, nothing downloaded)
with its AdamW state after one step, and writes, alternating, `--repeats` times each:

* an epoch checkpoint (engine.training.checkpoint_state: model, optimizer, scheduler, args), and
* a mid-epoch one: the same plus the position in the epoch (`--ranks` ranks' RNG states and running
  sums, as a run of that many processes records them),

with util.checkpoint.save_checkpoint (digests, temp file, fsync, rename) into `--dir` (default: a temp
folder under the current one, i.e. the filesystem a run's output_dir would use), then loads the
mid-epoch file as a resume does. Prints sizes, median times and the ratios, and what checkpoints every
`--interval_minutes` cost as a share of training time. Save times depend on the disk and on what else
runs: report them with the machine.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import types
from typing import Dict, List, Optional

import torch

if __package__ in (None, ""):  # run as `python tools/x.py`: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import models  # noqa: E402
from engine.loops import EpochTally  # noqa: E402
from engine.resume_state import Position, rng_state  # noqa: E402
from engine.training import checkpoint_state  # noqa: E402
from tools.common import tool_args  # noqa: E402
from util.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from util.logger import SmoothedValue  # noqa: E402
from util.optim import build_lr_scheduler, build_optimizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METERS = 25  # about as many meters as a DINO epoch logs (loss, lr, each weighted and unscaled term)


def training_state(args) -> types.SimpleNamespace:
    """What checkpoint_state reads from a Run: the model, AdamW after one step, the scheduler, args."""
    model, _, _ = models.build_model(args)
    optimizer = build_optimizer(model, args)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.full_like(p, 1e-3)
    optimizer.step()  # creates exp_avg / exp_avg_sq for every trainable parameter
    scheduler, _ = build_lr_scheduler(optimizer, args, 1)
    return types.SimpleNamespace(model_without_ddp=model, optimizer=optimizer, lr_scheduler=scheduler, args=args,
                                 scaler=None, ema=None)


def position(ranks: int, batch_size: int) -> dict:
    """A position entry as `ranks` processes record it: each rank's RNG states and running sums."""
    tally = EpochTally()
    for i in range(METERS):
        meter = tally.meters.setdefault(f"loss_term_{i}", SmoothedValue())
        for step in range(40):
            meter.update(1.0 / (step + i + 1))
    mine = {"rng": rng_state(), "tally": tally.state()}
    return Position(epoch=3, iteration=1234, world_size=ranks, batch_size=batch_size,
                    ranks=[mine] * ranks).to_dict()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(argv: Optional[List[str]] = None) -> Dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", default=os.path.join(ROOT, "config", "DINO", "DINO_4scale.py"))
    p.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE", help="config keys to override")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ranks", type=int, default=8, help="processes whose RNG states the position holds")
    p.add_argument("--interval_minutes", type=float, default=15.0, help="mid-epoch checkpoint interval to cost")
    p.add_argument("--dir", default=".", help="folder to write the files under (a temp folder, removed after)")
    a = p.parse_args(argv)
    if a.repeats < 1 or a.ranks < 1 or a.interval_minutes <= 0:
        p.error("--repeats and --ranks must be >= 1 and --interval_minutes > 0")
    args = tool_args(a.config, a.options)
    state = training_state(args)
    folder = tempfile.mkdtemp(prefix="bench-ckpt-", dir=a.dir)
    try:
        paths = {k: os.path.join(folder, f"{k}.pth") for k in ("epoch", "mid")}
        build = {"epoch": lambda: checkpoint_state(state, 3),
                 "mid": lambda: {**checkpoint_state(state, 2), "position": position(a.ranks, args.batch_size)}}
        times: Dict[str, List[float]] = {"epoch": [], "mid": [], "build_position": [], "load_mid": []}
        for _ in range(a.repeats):  # alternating, so that load changes hit both alike
            for kind in ("epoch", "mid"):
                times[kind].append(timed(lambda: save_checkpoint(build[kind](), paths[kind])))
            times["build_position"].append(timed(lambda: position(a.ranks, args.batch_size)))
            times["load_mid"].append(timed(lambda: load_checkpoint(paths["mid"])))
        sizes = {k: os.path.getsize(v) for k, v in paths.items()}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    elements = sum(t.numel() for t in state.model_without_ddp.state_dict().values())
    print(f"{a.config}: {elements / 1e6:.1f} M model elements, AdamW state after one step; {a.ranks} ranks' "
          f"positions; median of {a.repeats} alternating saves into {a.dir} ({os.cpu_count()} CPUs)")
    print("| checkpoint | size (MB) | save (s) |")
    print("|---|---|---|")
    for kind, name in (("epoch", "epoch"), ("mid", "mid-epoch")):
        print(f"| {name} | {sizes[kind] / 1e6:.1f} | {med[kind]:.2f} |")
    print(f"mid-epoch / epoch: size {sizes['mid'] / sizes['epoch']:.4f}, save time {med['mid'] / med['epoch']:.3f}; "
          f"the position adds {(sizes['mid'] - sizes['epoch']) / 1e3:.0f} KB and {1e3 * med['build_position']:.1f} ms "
          f"to gather")
    print(f"load of the mid-epoch file (a resume): {med['load_mid']:.2f} s")
    share = med["mid"] / (a.interval_minutes * 60)
    print(f"a mid-epoch checkpoint every {a.interval_minutes:g} min costs {100 * share:.3f} % of training time; "
          f"a SIGKILL loses at most {a.interval_minutes:g} min (on average half), a preemption signal none")
    return {**med, "size_epoch": sizes["epoch"], "size_mid": sizes["mid"], "share": share}


if __name__ == "__main__":
    run()
