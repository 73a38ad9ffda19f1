"""tools/benchmark_shared_cpu.py runs (its timings are the lead's to take on an idle machine, not a test's)."""
import torch

from tools import benchmark_shared_cpu
from util import cpu_threads

from cli_errors import user_error


def test_worker_times_train_iterations_with_the_thread_count_it_used(tiny_cfg, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    config, opts = tiny_cfg
    before = torch.get_num_threads()
    worker_opts = benchmark_shared_cpu.get_parser().parse_args(
        ["--worker", "--threads", "1", "--iterations", "2", "--warmup", "1", "-c", config, "--options", *opts])
    try:
        result = benchmark_shared_cpu.worker(worker_opts)
    finally:
        torch.set_num_threads(before)
        cpu_threads.install(None)
    cores = len(cpu_threads.allowed_cpus())
    assert result["threads"] == [1] and result["start"] == f"CPU threads: 1 (--threads; {cores} cores available)"
    assert result["s_per_it"] > 0


def test_table_puts_the_ratios_to_idle_side_by_side():
    rows = {"fixed": {"idle": {"s_per_it": 0.5, "threads": [[2]]}, "busy": {"s_per_it": 1.5, "threads": [[2]]},
                      "pair": {"s_per_it": 1.8, "threads": [[2], [2]]}},
            "auto": {"idle": {"s_per_it": 0.6, "threads": [[2]]}, "busy": {"s_per_it": 1.2, "threads": [[1]]},
                     "pair": {"s_per_it": 1.5, "threads": [[1], [1, 2]]}}}
    lines = benchmark_shared_cpu.table(rows, ["idle", "busy", "pair"])
    assert lines[0] == "| setting | idle s/it | busy s/it (x idle) | pair s/it (x idle) | threads |"
    assert lines[2] == "| fixed | 0.500 | 1.500 (3.00x) | 1.800 (3.60x) | idle: [[2]]; busy: [[2]]; pair: [[2], [2]] |"
    assert lines[3] == ("| auto | 0.600 | 1.200 (2.00x) | 1.500 (2.50x) | idle: [[2]]; busy: [[1]]; "
                        "pair: [[1], [1, 2]] |")


def test_unknown_setting_or_scenario_is_one_line(capsys):
    with user_error(capsys, r"\['lazy', 'crowd'\]: settings are fixed, auto, passive or N"):
        benchmark_shared_cpu.main(["--settings", "auto,lazy", "--scenarios", "idle,crowd"])
    with user_error(capsys, "--iterations and --warmup must be >= 1"):
        benchmark_shared_cpu.main(["--iterations", "0"])
