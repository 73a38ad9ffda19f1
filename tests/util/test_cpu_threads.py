"""util/cpu_threads.py: the thread count follows the cores other processes leave free (issue 26, item 3).
The slowdown itself is measured by tools/benchmark_shared_cpu.py, not here (timings have no place in tests)."""
import os
import subprocess
import sys
import time

import pytest
import torch

from util import cpu_threads
from util.cpu_threads import CpuLoad, ThreadPolicy, fixed_count

from cli_errors import user_error


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # tests/conftest.py fixes it for the other tests
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
    cpu_threads.install(None)


class Script:
    """A CpuLoad stand-in: others() returns the given values in turn."""

    def __init__(self, *values):
        self.values = list(values)

    def others(self):
        return self.values.pop(0)


def policy(*others, cores=2, requested="auto"):
    p = ThreadPolicy(requested, say=lambda line: said.append(line), interval=0.0, load=Script(*others))
    p.cores = cores
    return p


said = []


def test_others_are_the_busy_ticks_less_this_process_and_its_children():
    ticks = iter([(100, 400, 10), (250, 600, 60)])  # (busy, total) of 2 CPUs and our own, at two moments
    snapshots = [next(ticks) for _ in range(2)]
    machine = iter([s[:2] for s in snapshots])
    own = iter([s[2] for s in snapshots])
    load = CpuLoad([0, 1], machine=lambda cpus: next(machine), own=lambda: next(own))
    # 200 ticks elapsed on 2 CPUs = 100 per CPU; 150 busy, 50 of them ours: others kept 1.0 core busy
    assert load.others() == pytest.approx(1.0)


def test_proc_reading_gives_a_share_of_the_allowed_cores():
    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat here")
    load = CpuLoad()
    sum(i * i for i in range(200_000))  # let some ticks pass
    others = load.others()
    assert others is None or 0.0 <= others <= len(load.cpus)
    assert cpu_threads._process_ticks(os.getpid()) > 0


def test_own_ticks_include_children_and_survive_a_kernel_without_children_lists(monkeypatch):
    if not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"):
        pytest.skip("this kernel does not list children in /proc")
    child = subprocess.Popen([sys.executable, "-c", "while True:\n    pass\n"])
    try:
        time.sleep(0.5)
        # this process's ticks less those of every live child (the suite may have others than `child`),
        # the children read after the total so that own_alone can only come out low
        total = cpu_threads._process_ticks(os.getpid())
        own_alone = total - sum(cpu_threads._process_ticks(c) for c in cpu_threads._children(os.getpid()))
        assert child.pid in cpu_threads._children(os.getpid())
        assert cpu_threads._process_ticks(child.pid) > 0 and own_alone > 0
        real_open = open

        def no_children(path, *a, **k):
            if str(path).endswith("/children"):
                raise FileNotFoundError(path)
            return real_open(path, *a, **k)

        monkeypatch.setattr("builtins.open", no_children)
        assert cpu_threads._process_ticks(os.getpid()) >= own_alone  # its own ticks, without the child's
    finally:
        child.kill()
        child.wait()


def test_start_takes_the_free_cores():
    said.clear()
    p = policy(1.0)  # one of 2 cores busy elsewhere
    line = p.start()
    assert p.threads == torch.get_num_threads() == 1
    assert line.startswith("CPU threads: 1 of 2 cores (auto: other processes use 1.0")
    assert policy(0.2).start().startswith("CPU threads: 2 of 2 cores") and torch.get_num_threads() == 2
    assert policy(1.9).start().startswith("CPU threads: 1 of 2")  # never 0


def test_revisit_follows_the_free_cores_with_a_margin():
    said.clear()
    p = policy(0.0, 0.4, 1.2, 0.5, 0.2, 1.6)
    assert p.start() and p.threads == 2
    assert p.revisit() is None  # 1.6 free of 2 threads: less than 0.5 below, kept
    assert p.revisit() == 1 and torch.get_num_threads() == 1  # 0.8 free
    assert p.revisit() is None  # 1.5 free: not yet 0.75 above 1 thread
    assert p.revisit() == 2  # 1.8 free
    assert p.revisit() == 1  # 0.4 free
    assert said == ["CPU threads: 2 -> 1 (other processes now use 1.2 of 2 cores)",
                    "CPU threads: 1 -> 2 (other processes now use 0.2 of 2 cores)",
                    "CPU threads: 2 -> 1 (other processes now use 1.6 of 2 cores)"]


def test_a_fixed_count_is_never_changed(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    p = policy(1.5, 1.5, requested="2")
    assert p.start() == "CPU threads: 2 (--threads; 2 cores available)" and p.revisit() is None
    assert p.threads == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert fixed_count("auto") == 1 and fixed_count("3") == 3 and fixed_count("all") == len(os.sched_getaffinity(0))
    assert policy(requested="auto").start() == "CPU threads: 1 (OMP_NUM_THREADS; 2 cores available)"
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert fixed_count("auto") is None
    with pytest.raises(ValueError, match="--threads 'many' is not allowed: give auto, all or a positive integer"):
        fixed_count("many")


def test_the_progress_loop_revisits_the_installed_policy(tmp_path):
    from util.logger import MetricLogger, setup_logger

    class Counting:
        calls = 0

        def revisit(self):
            Counting.calls += 1

    cpu_threads.install(Counting())
    meters = MetricLogger(setup_logger(None, stream=sys.stderr), 100)
    assert list(meters.log_every(range(5), "Test:", 5)) == [0, 1, 2, 3, 4]
    assert Counting.calls == 5


def test_main_and_tools_take_threads(capsys, monkeypatch):
    import main
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert main.build_args(["--threads", "1"]).threads == "1"
    with user_error(capsys, r"argument --threads: 'x' is not allowed: give auto, all or a positive integer"):
        main.build_args(["--threads", "x"])
    from tools import benchmark_msda
    with user_error(capsys, "argument --threads: '0' is not allowed"):
        benchmark_msda.main(["--threads", "0"])
    from engine.cli import start_threads
    from util.slconfig import ConfigError
    monkeypatch.setenv("OMP_NUM_THREADS", "many")  # the environment's value is checked when the run starts
    with pytest.raises(ConfigError, match="--threads 'many' is not allowed.*came from OMP_NUM_THREADS"):
        start_threads("auto", print)
