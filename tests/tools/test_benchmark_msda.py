"""tools/benchmark_msda.py: level shapes, the CPU peak-memory measurement and the printed table."""
import re

import pytest
import torch

from tools import benchmark_msda

from cli_errors import user_error


def test_level_shapes_match_dino_strides():
    assert benchmark_msda.level_shapes(800, 1333) == [(100, 167), (50, 84), (25, 42), (13, 21)]
    assert sum(h * w for h, w in benchmark_msda.level_shapes(800, 1333)) == 22223


def test_encoder_inputs_are_one_query_per_token():
    shapes = benchmark_msda.level_shapes(64, 64)
    value, spatial, starts, loc, attn = benchmark_msda.make(shapes, 85, "cpu", torch.float32)
    assert value.shape == (2, 85, 8, 32) and starts.tolist() == [0, 64, 80, 84]
    assert loc.shape == (2, 85, 8, 4, 4, 2) and torch.allclose(attn.sum(-1), torch.ones(()))


def test_cpu_peak_extra_memory_sees_a_known_allocation():
    def allocate():
        x = torch.empty(4 * 2**20, dtype=torch.uint8)  # 4 MiB alive at once with the next one
        y = torch.empty(2 * 2**20, dtype=torch.uint8)
        del x, y
    peak = benchmark_msda.peak_extra_bytes(allocate, "cpu")
    assert 6 * 2**20 <= peak < 7 * 2**20


def test_table_and_summary_lines(capsys):
    benchmark_msda.main(["--device", "cpu", "--image-size", "64", "64", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "| shape | queries | backend | forward ms | fwd+bwd ms | peak extra MiB (fwd+bwd) |" in out
    rows = [line for line in out.splitlines() if line.startswith("| encoder") or line.startswith("| decoder")]
    row = re.compile(r"\| (encoder \| 85|decoder \| 900) \| (pytorch|compiled) \| \d+\.\d \| \d+\.\d \| \d+\.\d \|")
    assert rows and all(row.fullmatch(line) for line in rows), rows  # format only: no speed is asserted
    backends = {line.split("|")[3].strip() for line in rows}
    assert "pytorch" in backends and len(rows) == 2 * len(backends)
    last = out.strip().splitlines()[-1]
    if "compiled" in backends:  # the CPU kernel builds on any machine with a C++ compiler
        assert re.fullmatch(r"compiled/pytorch forward\+backward speedup: \d+\.\d\d", last)
        assert "peak memory ratio (encoder): " in out
    else:
        assert last.endswith("n/a (compiled backend unavailable)")


def test_cuda_without_gpu_is_one_line_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with user_error(capsys, "no CUDA device is visible"):
        benchmark_msda.main(["--device", "cuda"])
