"""util/run_dir.py: output_dir patterns and evaluation folders."""
import pytest

from util.run_dir import eval_output_dir, expand_output_dir, holds_training_run
from util.slconfig import ConfigError


def test_patterns():
    now = 1_700_000_000.0  # 2023-11-14 in UTC
    assert expand_output_dir("logs/R50-%j", {"SLURM_JOB_ID": "77"}) == "logs/R50-77"
    assert expand_output_dir("logs/R50-%j", {"SLURM_JOBID": "78"}) == "logs/R50-78"
    stamp = expand_output_dir("logs/%t", {}, now)
    assert stamp.startswith("logs/2023111") and len(stamp) == len("logs/YYYYmmdd-HHMMSS")
    assert expand_output_dir("a%%b%", {}) == "a%b%"
    with pytest.raises(ConfigError, match=r"%j is the SLURM job id, but SLURM_JOB_ID is not set"):
        expand_output_dir("logs/%j", {})
    assert expand_output_dir("logs/R50-%j", {}, now, job_fallback=True).startswith("logs/R50-local-2023111")
    with pytest.raises(ConfigError, match=r"unknown pattern %q"):
        expand_output_dir("logs/%q", {})


def test_eval_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint0003.pth").write_bytes(b"")
    assert holds_training_run(str(run)) and not holds_training_run(str(tmp_path / "nope"))
    ckpt = str(run / "checkpoint0003.pth")
    assert eval_output_dir(str(run), "logs/x", ckpt, False) == str(run / "eval" / "checkpoint0003")
    assert eval_output_dir(None, "logs/x", ckpt, True) == str(run / "eval" / "checkpoint0003-debug")
    fresh = str(tmp_path / "results")
    assert eval_output_dir(fresh, "logs/x", ckpt, False) == fresh
    assert eval_output_dir(None, "logs/x", "ckpt.pth", False) == "logs/x/eval/ckpt"
