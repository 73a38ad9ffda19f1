"""The parts of the GPU side-by-side (models/dino/ops/side_by_side.py, gpu_check.sh) that need no GPU:
the previous kernel's sources and schema, the two problems, the table and summary, the script's syntax.
(The previous kernel's build itself needs nvcc and about a minute; it runs on the GPU machine.)"""
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from models.dino.ops import side_by_side as sbs

REPO = Path(__file__).resolve().parents[2]


def test_previous_sources_come_from_the_commit_before_issue_24(tmp_path, monkeypatch):
    monkeypatch.delenv("MSDA_PREV_SRC", raising=False)
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("no git checkout")
    try:
        out = sbs.export_prev(tmp_path / "prev")
    except RuntimeError as exc:  # a shallow clone without the commit
        pytest.skip(str(exc))
    kernels = (out / "msda_cuda_kernels.cuh").read_text()
    # the kernel before issue 24: one channel per lane, strides and group size passed at run time
    assert "Sizes s, Strides st, int G" in kernels and "Geometry" not in kernels
    assert "TORCH_LIBRARY_IMPL(msda, CUDA, m)" in (out / "msda_cuda.cu").read_text()
    assert (out / "msda_prev_schema.cpp").read_text() == sbs.PREV_SCHEMA


def test_previous_sources_from_a_folder(tmp_path, monkeypatch):
    given = tmp_path / "given"
    given.mkdir()
    for name in sbs.PREV_FILES:
        (given / name).write_text(f"// {name}\n")
    monkeypatch.setenv("MSDA_PREV_SRC", str(given))
    out = sbs.export_prev(tmp_path / "prev")
    assert sorted(p.name for p in out.iterdir()) == sorted(sbs.PREV_FILES + ("msda_prev_schema.cpp",))
    assert (out / "msda_cuda.cu").read_text() == "// msda_cuda.cu\n"
    monkeypatch.setenv("MSDA_PREV_SRC", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError):
        sbs.export_prev(tmp_path / "prev2")


def test_previous_schema_is_the_msda_schema(compiled):
    """msda_prev declares exactly torch.ops.msda's signatures, so one set of arguments fits both."""
    declared = re.findall(r'"([^"]*)"\s*\n?\s*"([^"]*)"', sbs.PREV_SCHEMA)
    prev = sorted(a + b for a, b in declared)
    ours = sorted(str(op.default._schema).removeprefix("msda::")
                  for op in (compiled.ms_deform_attn_forward, compiled.ms_deform_attn_backward))
    assert prev == ours


def test_anchor_problem():
    value, shapes, starts, loc, attn = sbs.anchor_problem("cpu", torch.bfloat16)
    assert value.shape == (4, 64 * 64 + 32 * 32 + 16 * 16 + 8 * 8, 8, 32) and value.dtype == torch.bfloat16
    assert loc.shape == (4, 10_000, 8, 4, 4, 2) and loc.dtype == torch.float32 and attn.shape == (4, 10_000, 8, 4, 4)
    assert starts.tolist() == [0, 4096, 5120, 5376]
    torch.testing.assert_close(attn.sum((-1,)), torch.ones(4, 10_000, 8, 4))


def test_encoder_problem_is_dinos_800x1333_encoder():
    value, shapes, starts, loc, attn = sbs.encoder_problem("cpu", torch.float32)
    assert shapes.tolist() == [[100, 167], [50, 84], [25, 42], [13, 21]]
    assert value.shape == (2, 22_223, 8, 32) and loc.shape == (2, 22_223, 8, 4, 4, 2)
    # query 0 is the first pixel of level 0: its points lie within a few pixels of (0.5 / 167, 0.5 / 100)
    near = loc[:, 0, :, 0] - torch.tensor([0.5 / 167, 0.5 / 100])
    assert (near.abs() < torch.tensor([10 / 167, 10 / 100])).all()


def test_table_and_summary():
    times = {"fwd": {"new": 1.0, "prev": 2.5, "pytorch": 4.0}, "fwd+bwd": {"new": 2.0, "prev": 9.0, "pytorch": 5.0}}
    lines = sbs.format_rows([("anchor", "fp32", times, 3e-7)])
    assert lines[2] == "| anchor | fp32 | fwd | 1.000 | 2.500 | 4.000 | 2.50x | 4.00x | 3.0e-07 |"
    assert lines[3] == "| anchor | fp32 | fwd+bwd | 2.000 | 9.000 | 5.000 | 4.50x | 2.50x | 3.0e-07 |"
    assert sbs.summary([("anchor", "fp32", times, 0), ("encoder", "bf16", times, 0)]) == (
        "side-by-side: new vs previous kernel, fwd+bwd: anchor fp32 4.50x, encoder bf16 4.50x")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_main_without_a_gpu_says_so(capsys):
    assert sbs.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_gpu_check_script_parses():
    done = subprocess.run(["bash", "-n", str(REPO / "scripts" / "gpu_check.sh")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
