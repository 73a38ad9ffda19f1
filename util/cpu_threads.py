"""How many CPU threads a run computes with: chosen from the cores other processes leave free, and revisited
while it runs (main.py and the tools).

Why. torch's CPU ops and the compiled msda kernel run their loops on an OpenMP pool of one thread per core
(2 on a 2-core machine). Each parallel loop ends when its last thread finishes, so when another process
takes one of the cores, the thread that shares it runs at half speed and every loop waits for it. Issue 26
measured, with a single-threaded busy loop on one of 2 cores, a train iteration of the default config at
3.0x its idle time, where the lost core explains 2x; two default runs side by side at 3.6x each; and under
a 2-thread test suite an evaluation of 48 images at 131 s instead of 3 s (loops of many small ops, each
waiting for a preempted thread). One thread per free core avoids all three; tools/benchmark_shared_cpu.py
measures them (figures in docs/tools.md).

How. The free cores are the CPUs this process may run on (its affinity) minus the cores other processes
kept busy over the last few seconds, read from /proc/stat (busy time of those CPUs) less this process's
own time and its children's (DataLoader workers) from /proc. `ThreadPolicy.start` samples a quarter of a
second and sets torch.set_num_threads; `ThreadPolicy.revisit`, called between iterations, samples again
every `interval` seconds and changes the count when the free cores moved by a clear margin (adding a
thread needs 0.75 of a core more, dropping one 0.5 less, so two runs do not chase each other). A fixed
count (--threads N, or OMP_NUM_THREADS in the environment) is never changed. Elsewhere than Linux there is
no /proc/stat: the count is torch's default unless fixed.
"""
import math
import os
import time
from typing import Callable, List, Optional, Tuple

import torch

SAMPLE_S = 0.25  # the first look at the machine
INTERVAL_S = 10.0  # between later looks
UP, DOWN = 0.75, 0.5  # margins (in cores) to add / drop a thread


def allowed_cpus() -> List[int]:
    """The CPUs this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def _cpu_jiffies(cpus: List[int]) -> Optional[Tuple[int, int]]:
    """(busy, total) clock ticks of `cpus` since boot from /proc/stat; None without it."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    busy = total = 0
    wanted = {f"cpu{c}" for c in cpus}
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted:
            ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
            total += sum(ticks)
            busy += sum(ticks) - ticks[3] - ticks[4]
    return busy, total


def _process_ticks(pid: int) -> int:
    """utime + stime of process `pid` and, recursively, of its live children (clock ticks); 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of the whole line)
    except (OSError, ValueError, IndexError):
        return 0
    return ticks + sum(_process_ticks(child) for child in _children(pid))


def _children(pid: int) -> List[int]:
    """The live child processes of `pid` (none where the kernel does not list them)."""
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(child) for child in f.read().split()]
    except (OSError, ValueError):
        pass
    return found


class CpuLoad:
    """Cores kept busy by other processes between two calls of `others`. `machine(cpus)` gives (busy, total)
    ticks of those CPUs and `own()` this process's ticks (children included); /proc's by default."""

    def __init__(self, cpus: Optional[List[int]] = None, machine: Callable = _cpu_jiffies,
                 own: Callable[[], int] = lambda: _process_ticks(os.getpid())):
        self.cpus = cpus or allowed_cpus()
        self.machine, self.own = machine, own
        self.last = self._snapshot()

    def _snapshot(self) -> Optional[Tuple[int, int, int]]:
        machine = self.machine(self.cpus)
        return None if machine is None else (*machine, self.own())

    def others(self) -> Optional[float]:
        """Cores (0..len(cpus)) other processes used since the last call; None where /proc cannot tell."""
        now = self._snapshot()
        last, self.last = self.last, now
        if now is None or last is None or now[1] <= last[1]:
            return None
        busy, total, own = (a - b for a, b in zip(now, last))
        elapsed_cores = total / len(self.cpus)  # ticks of one CPU in the interval
        return min(len(self.cpus), max(0.0, (busy - own) / elapsed_cores))


THREADS_HELP = ("CPU threads: 'auto' = one per core that other processes leave free, revisited while the run goes "
                "(a fixed count gives bitwise-repeatable runs), 'all' = one per core, or N; OMP_NUM_THREADS in the "
                "environment fixes it too")


def fixed_count(requested: Optional[str]) -> Optional[int]:
    """The thread count asked for: N, 'all' (every allowed CPU), else OMP_NUM_THREADS when set; None for
    'auto'. ValueError for anything else."""
    if requested == "all":
        return len(allowed_cpus())
    value = requested if requested not in (None, "auto") else os.environ.get("OMP_NUM_THREADS")
    if value in (None, ""):
        return None
    if not str(value).isdigit() or int(value) < 1:
        raise ValueError(f"--threads {value!r} is not allowed: give auto, all or a positive integer"
                         + (" (it came from OMP_NUM_THREADS)" if requested in (None, "auto") else ""))
    return int(value)


class ThreadPolicy:
    """The run's thread count (see the module docstring); `say` gets the line of each later change."""

    def __init__(self, requested: Optional[str] = "auto", say: Callable[[str], None] = print,
                 interval: float = INTERVAL_S, load: Optional[CpuLoad] = None):
        self.fixed = fixed_count(requested)
        self.say = say
        self.interval = interval
        self.cores = len(allowed_cpus())
        self.load = load
        self.threads = torch.get_num_threads()
        self.next_look = 0.0

    def start(self) -> str:
        """Choose and set the thread count; returns the line that says it and why."""
        if self.fixed is not None:
            self._set(self.fixed)
            origin = "OMP_NUM_THREADS" if os.environ.get("OMP_NUM_THREADS") == str(self.fixed) else "--threads"
            return f"CPU threads: {self.fixed} ({origin}; {self.cores} cores available)"
        self.load = self.load or CpuLoad()
        time.sleep(SAMPLE_S)
        others = self.load.others()
        if others is None:
            return f"CPU threads: {self.threads} (torch's default; the load of other processes is unknown here)"
        self._set(max(1, min(self.cores, math.floor(self.cores - others + 0.5))))
        self.next_look = time.monotonic() + self.interval
        return (f"CPU threads: {self.threads} of {self.cores} cores (auto: other processes use {others:.1f}, "
                f"revisited every {self.interval:.0f} s; --threads N fixes it)")

    def revisit(self) -> Optional[int]:
        """Between iterations: every `interval` seconds, follow the free cores; returns the new count when it
        changed, else None."""
        if self.fixed is not None or self.load is None or time.monotonic() < self.next_look:
            return None
        self.next_look = time.monotonic() + self.interval
        others = self.load.others()
        if others is None:
            return None
        free = self.cores - others
        wanted = self.threads
        if free >= self.threads + UP:
            wanted = min(self.cores, math.floor(free - UP) + 1)
        elif free <= self.threads - DOWN:
            wanted = max(1, min(self.threads - 1, math.floor(free + 0.5)))
        if wanted == self.threads:
            return None
        before = self.threads
        self._set(wanted)
        self.say(f"CPU threads: {before} -> {wanted} (other processes now use {others:.1f} of {self.cores} cores)")
        return wanted

    def _set(self, n: int) -> None:
        torch.set_num_threads(n)
        self.threads = n


_ACTIVE: Optional[ThreadPolicy] = None


def install(policy: Optional[ThreadPolicy]) -> Optional[ThreadPolicy]:
    """Make `policy` the process's (revisited by `between_iterations`); returns the one it replaces."""
    global _ACTIVE
    previous, _ACTIVE = _ACTIVE, policy
    return previous


def between_iterations() -> None:
    """Called by the progress loop (util.logger.MetricLogger.log_every) after every iteration."""
    if _ACTIVE is not None:
        _ACTIVE.revisit()
