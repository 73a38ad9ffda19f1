"""scripts/gpu_check.sh: valid bash, and a clear refusal on a machine without a CUDA device.

The checks themselves need a GPU (the script is run by hand on a lent GPU machine); here the
GPU is hidden (CUDA_VISIBLE_DEVICES=''), so this test means the same on a GPU machine.
"""
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")


def test_gpu_check_is_valid_bash():
    proc = subprocess.run(["bash", "-n", SCRIPT], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_gpu_check_refuses_without_a_cuda_device():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(["bash", SCRIPT], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA device"), proc.stderr
