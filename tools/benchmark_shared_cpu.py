"""How much a shared CPU slows a training run: a train iteration of the default config alone, next to a
single-threaded busy loop, and next to a second run of the same kind, per thread setting, with the ratios to
the idle time side by side. It starts the competing load itself.

    python tools/benchmark_shared_cpu.py [--settings fixed,auto] [--scenarios idle,busy,pair]
        [--iterations 8] [--warmup 3] [--settle S] [-c CONFIG] [--options KEY=VALUE ...]

Settings: 'fixed' = one thread per core whatever else runs (main.py before --threads auto), 'auto'
(main.py's default since, util/cpu_threads.py), 'passive' = 'fixed' with OMP_WAIT_POLICY=PASSIVE (OpenMP
threads sleep at the end of a parallel loop instead of spinning), or a number N (--threads N).
Scenarios: 'idle' (the run alone), 'busy' (a single-threaded busy loop started a second before the run, on
no particular core) and 'pair' (two runs started together; the mean of their two times).
Each measurement is a fresh process running main.py's setup (build_args, the thread choice, build_run) and
engine.train_one_epoch on the config's train loader: `warmup` untimed iterations, continued for 'auto' until
its first revisit of the thread count (--settle, 12 s by default), then `iterations` timed ones; its time is
their median. The thread counts a run used (the first, then each change) are printed with its time.
Figures depend on the machine being otherwise idle: run it alone.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

if __package__ in (None, ""):  # run as `python tools/x.py`: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from util.cli import ArgumentParser, fail  # noqa: E402
from util.cpu_threads import INTERVAL_S  # noqa: E402
from util.slconfig import DictAction  # noqa: E402

SCENARIOS = ("idle", "busy", "pair")
RESULT = "RESULT "  # the worker's last line: RESULT {json}
BUSY_LOOP = "while True:\n    pass\n"


class Timed:
    """The batches of a loader for `warmup` untimed iterations, continued until `settle_s` seconds have passed
    (so that --threads auto has looked at the machine again, see util/cpu_threads.INTERVAL_S), then `timed`
    more; `times` holds the timed iterations' durations (the time between two batches being asked for)."""

    def __init__(self, loader, warmup: int, timed: int, settle_s: float):
        self.loader, self.warmup, self.timed = loader, warmup, timed
        self.settle_until = time.perf_counter() + settle_s
        self.times: List[float] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        stamp, first_timed = time.perf_counter(), None
        for i, batch in enumerate(self.loader):
            if first_timed is None and i >= self.warmup and time.perf_counter() >= self.settle_until:
                first_timed = i
            if first_timed is not None and i == first_timed + self.timed:
                break
            yield batch
            now = time.perf_counter()
            if first_timed is not None:
                self.times.append(now - stamp)
            stamp = now


def worker(opts) -> Dict:
    """One run: main.py's setup, then warmup + iterations train iterations; returns the median iteration time."""
    import main
    from engine import train_one_epoch
    from engine.cli import start_threads
    from engine.run import build_run
    from util import dist as dist_utils

    with tempfile.TemporaryDirectory(prefix="shared-cpu-") as out:
        argv = ["--output_dir", out, "--threads", opts.threads, "-c", opts.config_file,
                "--options", "epochs=1", *(f"{k}={v}" for k, v in (opts.options or {}).items())]
        args = main.build_args(argv)
        dist_utils.init_distributed_mode(args)  # a single process: sets args.distributed as main.main does
        changes: List[int] = []  # the counts auto moved to while the run went
        policy, line = start_threads(args.threads, lambda text: changes.append(policy.threads))
        initial = policy.threads
        run = build_run(args)
        settle_s = opts.settle if opts.settle is not None else (INTERVAL_S + 2 if policy.fixed is None else 0.0)
        batches = Timed(run.loaders.train, opts.warmup, opts.iterations, settle_s)
        train_one_epoch(run.model, run.criterion, batches, run.optimizer, run.device, 0,
                        max_norm=args.clip_max_norm)
    if len(batches.times) < opts.iterations:
        fail("benchmark_shared_cpu.py", f"the train loader ended after {len(batches.times)} timed iterations of "
                                        f"{opts.iterations}: lower --iterations, --warmup or --settle")
    return {"s_per_it": statistics.median(batches.times), "threads": [initial] + changes, "start": line}


def measure(setting: str, scenario: str, opts) -> Dict:
    """Time `setting` in `scenario` (fresh worker processes; the busy loop is stopped afterwards)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    threads = setting if setting not in ("fixed", "passive") else "all"
    if setting == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--threads", threads, "--iterations",
               str(opts.iterations), "--warmup", str(opts.warmup), "-c", opts.config_file,
               *(["--settle", str(opts.settle)] if opts.settle is not None else []),
               *(["--options", *(f"{k}={v}" for k, v in opts.options.items())] if opts.options else [])]
    busy = None
    if scenario == "busy":
        busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
        time.sleep(1.0)
    try:
        workers = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                   for _ in range(2 if scenario == "pair" else 1)]
        results = [_result(w.communicate()[0], w.returncode) for w in workers]
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    return {"s_per_it": statistics.mean(r["s_per_it"] for r in results),
            "threads": [r["threads"] for r in results]}


def _result(output: str, code: int) -> Dict:
    found = [line for line in output.splitlines() if line.startswith(RESULT)]
    if code or not found:
        fail("benchmark_shared_cpu.py", f"a worker ended with exit status {code}: {output.strip()[-1500:]}")
    return json.loads(found[-1][len(RESULT):])


def table(rows: Dict[str, Dict[str, Dict]], scenarios: List[str]) -> List[str]:
    """Markdown: per setting the seconds per iteration of each scenario and its ratio to that setting's idle."""
    head = ["setting"] + [f"{s} s/it" + ("" if s == "idle" else " (x idle)") for s in scenarios] + ["threads"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for setting, by in rows.items():
        idle = by.get("idle", {}).get("s_per_it")
        cells = [setting]
        for s in scenarios:
            t = by[s]["s_per_it"]
            cells.append(f"{t:.3f}" + (f" ({t / idle:.2f}x)" if idle and s != "idle" else ""))
        cells.append("; ".join(f"{s}: {by[s]['threads']}" for s in scenarios))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def get_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", default="fixed,auto", help="comma list of fixed, auto, passive or a number")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma list of {', '.join(SCENARIOS)}")
    p.add_argument("--iterations", type=int, default=8, help="timed iterations per run (default 8)")
    p.add_argument("--warmup", type=int, default=3, help="untimed first iterations (default 3)")
    p.add_argument("--settle", type=float, default=None, metavar="S",
                   help=f"untimed seconds at least (default: {INTERVAL_S + 2:g} for auto, after which it has "
                        f"revisited its thread count once; 0 for a fixed count)")
    p.add_argument("-c", "--config_file", default="config/DINO/DINO_synthetic.py", help="config (default main.py's)")
    p.add_argument("--options", nargs="+", action=DictAction, metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", default="auto", help=argparse.SUPPRESS)
    return p


def main(argv: Optional[List[str]] = None):
    opts = get_parser().parse_args(argv)
    if opts.iterations < 1 or opts.warmup < 1 or (opts.settle or 0) < 0:
        fail("benchmark_shared_cpu.py", "--iterations and --warmup must be >= 1, --settle >= 0")
    if opts.worker:
        print(RESULT + json.dumps(worker(opts)), flush=True)
        return None
    settings = [s.strip() for s in opts.settings.split(",") if s.strip()]
    scenarios = [s.strip() for s in opts.scenarios.split(",") if s.strip()]
    bad = [s for s in settings if s not in ("fixed", "auto", "passive") and not s.isdigit()]
    bad += [s for s in scenarios if s not in SCENARIOS]
    if bad or not settings or not scenarios:
        fail("benchmark_shared_cpu.py", f"{bad or '(empty)'}: settings are fixed, auto, passive or N; scenarios "
                                        f"{', '.join(SCENARIOS)}")
    untimed = f"{opts.warmup} untimed" + (f" and {opts.settle:g} s" if opts.settle is not None else
                                          f" (auto: and at least {INTERVAL_S + 2:g} s)")
    print(f"{opts.config_file}: {opts.iterations} timed train iterations after {untimed} per run, "
          f"{len(os.sched_getaffinity(0))} CPUs; scenarios {', '.join(scenarios)}")
    rows = {}
    for setting in settings:
        rows[setting] = {s: measure(setting, s, opts) for s in scenarios}
        print(f"{setting}: " + ", ".join(f"{s} {r['s_per_it']:.3f} s/it" for s, r in rows[setting].items()),
              flush=True)
    for line in table(rows, scenarios):
        print(line)
    return rows


if __name__ == "__main__":
    main()
