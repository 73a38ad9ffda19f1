"""Shared tiny-run settings for the reliability tests (synthetic data, CPU, seconds per epoch)."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from util.checkpoint import load_checkpoint

from tiny_configs import RUN, options

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOOKED_MAIN = os.path.join(ROOT, "tests", "reliability", "hooked_main.py")

# 8 train images / batch 4 = 2 iterations per epoch; 2 val images in one batch
SYN = {"num_train": 8, "num_val": 2, "image_size": 96, "seed": 0}
TINY = options(RUN, synthetic_num_train=8, synthetic_num_val=2, synthetic_image_size=96,
               val_batch_size=2)  # the shared tiny run, tests/tiny_configs.py


def make_synthetic(root: str) -> str:
    from datasets.synthetic import ensure_synthetic_dataset
    return ensure_synthetic_dataset(root, **SYN)


def tiny_argv(out, syn_dir, *extra, epochs=1, options=()):
    return ["--output_dir", str(out), "--num_workers", "0", "--device", "cpu", *extra,
            "--options", *TINY, f"epochs={epochs}", f"synthetic_dir={syn_dir}", *options]


def popen_main(argv, hook=None, log_name="run.log", cwd_log_dir=None):
    """Start tests/reliability/hooked_main.py in a subprocess (1 thread, so runs are bitwise comparable)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("RELIABILITY_HOOK", None)
    if hook:
        env["RELIABILITY_HOOK"] = hook
    out = argv[argv.index("--output_dir") + 1]
    os.makedirs(out, exist_ok=True)
    log = open(os.path.join(cwd_log_dir or argv[argv.index("--output_dir") + 1], log_name), "ab")
    return subprocess.Popen([sys.executable, HOOKED_MAIN, *argv], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)


def popen_ranks(argv, world_size=2, log_name="run"):
    """Start `world_size` ranks of hooked_main.py directly, as SLURM's srun does (no torchrun agent), on a free
    local port, single-threaded; rank r logs to output_dir/<log_name>.rank<r>.log. Returns the Popen list."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = argv[argv.index("--output_dir") + 1]
    os.makedirs(out, exist_ok=True)
    procs = []
    for rank in range(world_size):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_"))}
        env.pop("RELIABILITY_HOOK", None)
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", RANK=str(rank), WORLD_SIZE=str(world_size),
                   LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        log = open(os.path.join(out, f"{log_name}.rank{rank}.log"), "ab")
        procs.append(subprocess.Popen([sys.executable, HOOKED_MAIN, *argv], cwd=ROOT, env=env, stdout=log,
                                      stderr=subprocess.STDOUT))
    return procs


def read_log(out):
    path = os.path.join(str(out), "log.txt")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def weights(path):
    return load_checkpoint(str(path))["model"]


def flip_byte_in_largest_weight(path) -> str:
    """Flip one byte in the data of the largest 'model' tensor of a checkpoint file, in place; returns its key.

    torch's zip stores tensor records uncompressed, so the tensor's bytes appear verbatim in the file.
    The file stays readable by torch.load; only the integrity digest can tell.
    """
    state = torch.load(str(path), map_location="cpu", weights_only=True)["model"]
    key = max(state, key=lambda k: state[k].numel())
    data = state[key].numpy().tobytes()
    with open(path, "r+b") as f:
        start = f.read().find(data)
        assert start >= 0, f"{key}'s bytes not found in {path}"
        offset = start + len(data) // 2
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0xFF]))
    return key


def differing_tensors(a, b):
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def info_text(out) -> str:
    path = os.path.join(str(out), "info.txt")
    return open(path).read() if os.path.isfile(path) else ""


def wait_for(proc, cond, what, timeout_s=240):
    """Poll cond() until it holds; fail when `proc` exits first or after timeout_s."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            pytest.fail(f"run exited with {proc.returncode} before {what}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")
