"""Profile one full training step (forward, losses with matching and denoising, backward,
gradient clipping, AdamW step), or compare its time and peak memory with another commit.

    python tools/profile_step.py [-c CONFIG] [--image-size 512 512] [--batch 2] [--use_hae --use_emca]
                                 [--options K=V ...]
    python tools/profile_step.py --against eb8d5b3 [--repeats 3] ...

Without --against: the median wall time of each phase over --repeats steps, and the self CPU
time of one profiled step grouped by kind of op (matmul, convolution, deformable attention,
SDPA, copies and layout, optimizer arithmetic, the rest) with the top ops.

With --against REV: REV is checked out in a git worktree (under the system temp folder,
kept for the next call), and this tree and REV each run in their own process with the same
settings and inputs. Their steps alternate (this, REV, this, REV, ...) so that a change of
machine load hits both alike; printed are each side's median step time and peak memory and
the REV/this time ratio. REV must have tools/benchmark.py's dummy_batch and peak_memory_step
(any commit since 2026-11-24 does).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from typing import Dict, List, Optional

import torch

TREE_ENV = "PROFILE_STEP_TREE"  # set for an --against worker: the tree it imports
if __package__ in (None, ""):  # run as `python tools/x.py`: make the repository root importable
    # (an --against worker imports the other commit's tree instead)
    sys.path.insert(0, os.environ.get(TREE_ENV) or
                    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PHASES = ("forward", "losses", "backward", "optimizer")
# op name -> kind, by the first rule that matches (substring of the aten / custom op name)
KINDS = (("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")),
         ("convolution", ("convolution",)),
         ("deformable attention", ("msda::", "ms_deform_attn")),
         ("sdpa", ("scaled_dot_product",)),
         ("copies and layout", ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::cat", "aten::stack",
                                "aten::contiguous", "aten::index", "aten::repeat")),
         ("optimizer arithmetic", ("aten::_fused_adam", "aten::_foreach", "aten::addcdiv", "aten::addcmul",
                                   "aten::lerp", "aten::sqrt")))


def step_args(opts):
    """The config namespace of the tree being imported (this one, or an --against commit's, whose
    tools.common.tool_args may take the AugDETR flags as positional arguments)."""
    import inspect

    from tools.common import tool_args
    options = dict(opts.options or {}, **opts.config_flags)
    if "use_hae" in inspect.signature(tool_args).parameters:  # commits before the shared tool parser
        flags = [options.pop(k, False) for k in ("use_hae", "use_emca")]
        return tool_args(opts.config_file, [f"{k}={v}" for k, v in options.items()], *flags, "cpu")
    return tool_args(opts.config_file, options, "cpu")


def build_step(opts):
    """-> (step(phase_times) function, model): one training step as main.py takes it."""
    import engine
    from models import build_model
    from tools.benchmark import dummy_batch
    from util.optim import build_optimizer

    args = step_args(opts)
    torch.manual_seed(0)
    model, criterion, _ = build_model(args)
    model.train()
    optimizer = build_optimizer(model, args)
    torch.manual_seed(1)
    images, targets = dummy_batch(*opts.image_size, opts.batch, torch.device("cpu"), boxes=opts.boxes,
                                  num_classes=args.num_classes)
    total = getattr(engine, "total_loss", None)  # older commits: engine._weighted (a dict of terms)

    def weighted_sum(loss_dict):
        if total is not None:
            return total(loss_dict, criterion.weight_dict)[0]
        return sum(engine._weighted(loss_dict, criterion.weight_dict).values())

    def step(times: Dict[str, List[float]]) -> None:
        t0 = time.perf_counter()
        outputs = model(images, targets)
        t1 = time.perf_counter()
        loss = weighted_sum(criterion(outputs, targets))
        t2 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        if args.clip_max_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_max_norm)
        optimizer.step()
        t4 = time.perf_counter()
        for name, a, b in zip(PHASES, (t0, t1, t2, t3), (t1, t2, t3, t4)):
            times[name].append(b - a)
        times["step"].append(t4 - t0)

    return step, model


def kind_of(name: str) -> str:
    for kind, needles in KINDS:
        if any(n in name for n in needles):
            return kind
    return "other"


def breakdown(step) -> None:
    """Self CPU time of one step by kind of op, and the top ops."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(defaultdict(list))
    ops = [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in prof.key_averages()]
    total = sum(t for _, t, _ in ops)
    by_kind: Dict[str, float] = defaultdict(float)
    for name, t, _ in ops:
        by_kind[kind_of(name)] += t
    print(f"self CPU time of one profiled step: {total:.2f} s")
    print("| kind | self time (s) | share |\n|---|---|---|")
    for kind, t in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"| {kind} | {t:.3f} | {100 * t / total:.1f}% |")
    print("| top op | self time (s) | calls |\n|---|---|---|")
    for name, t, n in sorted(ops, key=lambda o: -o[1])[:12]:
        print(f"| {name} | {t:.3f} | {n} |")


def print_phases(times: Dict[str, List[float]], label: str) -> None:
    parts = ", ".join(f"{p} {statistics.median(times[p]):.3f}" for p in PHASES)
    print(f"{label}: step {statistics.median(times['step']):.3f} s (median of {len(times['step'])}; {parts})")


def child(opts) -> None:
    """--against worker: build, warm up, then one step per line read from stdin; JSON replies."""
    from tools.benchmark import peak_memory_step
    step, _ = build_step(opts)
    step(defaultdict(list))  # warm-up
    peak = peak_memory_step(lambda: step(defaultdict(list)), torch.device("cpu"))
    print(json.dumps({"ready": True, "peak_mib": peak / 2 ** 20}), flush=True)
    for _ in sys.stdin:
        times: Dict[str, List[float]] = defaultdict(list)
        step(times)
        print(json.dumps({k: v[0] for k, v in times.items()}), flush=True)


def worktree(rev: str) -> str:
    """A detached worktree of `rev` under the temp folder (created once, reused)."""
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                          check=True).stdout.strip()
    sha = subprocess.run(["git", "-C", root, "rev-parse", "--verify", rev + "^{commit}"], capture_output=True,
                         text=True)
    from util.cli import fail  # in the parent only: an --against worker imports another commit's tree
    if sha.returncode:
        fail("profile_step.py", f"--against {rev}: not a commit of {root}")
    path = os.path.join(tempfile.gettempdir(), f"augdetr-worktree-{sha.stdout.strip()[:12]}")
    if not os.path.isdir(path):
        subprocess.run(["git", "-C", root, "worktree", "add", "--detach", path, sha.stdout.strip()], check=True,
                       capture_output=True)
    return path


def start_child(tree: str, argv: List[str]) -> subprocess.Popen:
    # the waiting process's OpenMP threads sleep instead of spinning on the cores the other one uses
    env = dict(os.environ, **{TREE_ENV: tree}, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", *argv], cwd=tree, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return proc


def read_reply(proc: subprocess.Popen, tree: str) -> dict:
    while True:
        line = proc.stdout.readline()
        if not line:
            from util.cli import fail
            fail("profile_step.py", f"the step process in {tree} ended (exit {proc.wait()}); see its output above")
        if line.startswith("{"):
            return json.loads(line)


def child_argv(opts) -> List[str]:
    argv = ["-c", opts.config_file, "--image-size", *map(str, opts.image_size), "--batch", str(opts.batch),
            "--boxes", str(opts.boxes)]
    options = dict(opts.options or {}, **opts.config_flags)  # config-key flags passed as the keys they set
    return argv + (["--options", *(f"{k}={_option_text(v)}" for k, v in options.items())] if options else [])


def _option_text(value) -> str:
    return "[" + ",".join(map(str, value)) + "]" if isinstance(value, (list, tuple)) else str(value)


def compare(opts) -> None:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = {"this tree": here, opts.against: worktree(opts.against)}
    procs = {name: start_child(tree, child_argv(opts)) for name, tree in trees.items()}
    peaks = {name: read_reply(p, trees[name])["peak_mib"] for name, p in procs.items()}
    times: Dict[str, Dict[str, List[float]]] = {name: defaultdict(list) for name in procs}
    for _ in range(opts.repeats):
        for name, p in procs.items():
            p.stdin.write("step\n")
            p.stdin.flush()
            for k, v in read_reply(p, trees[name]).items():
                times[name][k].append(v)
    for p in procs.values():
        p.stdin.close()
        p.wait()
    h, w = opts.image_size
    print(f"training step, {opts.config_file}, {h}x{w}, batch {opts.batch}, {torch.get_num_threads()} threads, "
          f"steps alternating between the two processes")
    for name in procs:
        print_phases(times[name], f"{name} ({trees[name]}), peak {peaks[name]:.0f} MiB")
    this, other = (statistics.median(times[n]["step"]) for n in procs)
    print(f"{opts.against} / this tree: step time {other / this:.3f}, peak memory "
          f"{peaks[opts.against] / peaks['this tree']:.3f}")


def _step_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"),
                   help="input size (default 512 512)")
    p.add_argument("--batch", type=int, default=2, help="images per step (default 2)")
    p.add_argument("--boxes", type=int, default=5, help="random ground-truth boxes per image (default 5)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps (per side with --against; default 3)")


def get_parser() -> argparse.ArgumentParser:
    from tools.common import add_model_arguments
    from util.cli import ArgumentParser
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p, config_default="config/DINO/DINO_4scale.py", config_help="config (default DINO_4scale)",
                        threads="all",
                        with_device=False)
    _step_arguments(p)
    p.add_argument("--against", default=None, metavar="REV", help="compare with this commit (a git worktree)")
    return p


def child_parser() -> argparse.ArgumentParser:
    """The --against worker's arguments: plain, so that any commit's tree can be imported behind them
    (the parent passes the config-key flags as --options)."""
    p = argparse.ArgumentParser(prog="profile_step.py --child")
    p.add_argument("--child", action="store_true")
    p.add_argument("-c", "--config_file", required=True)
    p.add_argument("--options", nargs="+", default=[])
    _step_arguments(p)
    return p


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--child" in argv:
        opts = child_parser().parse_args(argv)
        from util.slconfig import parse_option_value  # the imported tree's (every commit has it)
        opts.options = {k: parse_option_value(v) for k, v in (o.split("=", 1) for o in opts.options)}
        opts.config_flags = {}
        return child(opts)
    from tools.common import TOOL_ERRORS, config_flags, print_threads
    from util.cli import fail, run_guarded
    opts = get_parser().parse_args(argv)
    run_guarded("profile_step.py", lambda: print_threads(opts), TOOL_ERRORS)
    opts.config_flags = config_flags(opts)
    if min(opts.image_size) < 32 or opts.batch < 1 or opts.repeats < 1 or opts.boxes < 0:
        fail("profile_step.py", "need --image-size >= 32, --batch >= 1, --repeats >= 1, --boxes >= 0")
    if opts.against:
        return compare(opts)
    step, _ = build_step(opts)
    step(defaultdict(list))  # warm-up
    times: Dict[str, List[float]] = defaultdict(list)
    for _ in range(opts.repeats):
        step(times)
    h, w = opts.image_size
    print(f"training step, {opts.config_file}, {h}x{w}, batch {opts.batch}, {torch.get_num_threads()} threads")
    print_phases(times, "wall time")
    breakdown(step)


if __name__ == "__main__":
    main()
