"""main.py on a shared cluster, in-process on the tiny synthetic run: a second training on a folder in use
stops with one line (an evaluation into its own folder does not); a full disk during a checkpoint stops
with one line and the rerun resumes from the checkpoints before it; under run_with_submitit.py a
preemption signal checkpoints mid-epoch, then hands over to submitit's handler, which requeues."""
import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import types

import pytest

import main
import run_with_submitit
from engine import training
from util import disk
from util.checkpoint import TMP_PREFIX, load_checkpoint
from util.run_lock import LOCK_NAME

from reliability_helpers import ROOT, make_synthetic, read_log, tiny_argv


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return make_synthetic(str(tmp_path_factory.mktemp("syn")))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, syn):
    """A finished 1-epoch tiny run (its folder holds checkpoint.pth)."""
    out = tmp_path_factory.mktemp("trained")
    assert main.cli(tiny_argv(out, syn)) == 0
    return out


def test_second_training_on_a_folder_in_use_stops_and_evaluation_is_unaffected(trained, syn):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        record = {"host": socket.gethostname(), "pid": holder.pid, "started": time.time(),
                  "heartbeat": time.time(), "heartbeat_s": 30.0, "token": "live", "command": "main.py (the other)"}
        (trained / LOCK_NAME).write_text(json.dumps(record))
        info_before = (trained / "info.txt").read_text()
        second = subprocess.run([sys.executable, "main.py", *tiny_argv(trained, syn, epochs=2)], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        err = second.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"main.py: error: {trained} is in use by another training run: host "
                                                   f"{socket.gethostname()} pid {holder.pid}"), second.stderr
        assert (trained / "info.txt").read_text() == info_before  # nothing written into the other run's folder
        # an evaluation of that run's checkpoint writes into its own folder, lock or not
        ckpt = str(trained / "checkpoint.pth")
        assert main.cli(tiny_argv(trained, syn, "--eval", "--resume", ckpt)) == 0
        assert (trained / "eval" / "checkpoint" / "log.txt").is_file()
        assert json.loads((trained / LOCK_NAME).read_text())["token"] == "live"
    finally:
        holder.kill()
        holder.wait()
        (trained / LOCK_NAME).unlink(missing_ok=True)


class _FullAfter:
    """A file whose writes raise ENOSPC once `limit` bytes were written."""

    def __init__(self, f, limit: int):
        self.f, self.limit, self.written = f, limit, 0

    def write(self, data):
        if self.written + len(data) > self.limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return self.f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def __getattr__(self, attr):
        return getattr(self.f, attr)


def full_disk_at_checkpoint(nth: int, after_bytes: int, monkeypatch) -> None:
    """The `nth` checkpoint write of util/disk raises ENOSPC after `after_bytes` (the hook the tests use
    where no small filesystem can be mounted; tests/util/test_disk.py also tries a real tmpfs)."""
    real_open, count = disk._open, []

    def hooked(file, mode="r", *a, **kw):
        f = real_open(file, mode, *a, **kw)
        if os.path.basename(str(file)).startswith(TMP_PREFIX):
            count.append(file)
            if len(count) == nth:
                return _FullAfter(f, after_bytes)
        return f

    monkeypatch.setattr(disk, "_open", hooked)


def test_full_disk_during_a_checkpoint_stops_with_one_line_then_resumes(tmp_path, syn, monkeypatch, capsys):
    out = tmp_path / "out"
    # epoch 0 writes checkpoint.pth, checkpoint0000.pth and the best one; the 4th checkpoint write
    # (epoch 1's checkpoint.pth) fails after 1 MB
    full_disk_at_checkpoint(4, 2**20, monkeypatch)
    assert main.cli(tiny_argv(out, syn, epochs=2)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"main.py: error: could not write {out / 'checkpoint.pth'}: No space left on device "
                             f"(errno 28); ")
    needed = re.search(r"free on its filesystem, about ([\d.]+) MiB needed; the files written before are intact",
                       err[0])
    assert needed and abs(float(needed[1]) * 2**20 / os.path.getsize(out / "checkpoint0000.pth") - 1) < 0.01
    assert not [n for n in os.listdir(out) if n.startswith(TMP_PREFIX)]
    assert load_checkpoint(str(out / "checkpoint.pth"))["epoch"] == 0  # the previous one, intact
    assert not (out / LOCK_NAME).exists()
    monkeypatch.undo()
    assert main.cli(tiny_argv(out, syn, epochs=2)) == 0  # the same command: resumes from epoch 0's checkpoint
    assert [e["epoch"] for e in read_log(out)] == [0, 1]


def test_submitit_preemption_checkpoints_then_hands_over_to_submitit(tmp_path, syn, monkeypatch):
    out = tmp_path / "out"
    env = types.SimpleNamespace(hostnames=["localhost"], job_id="42", paths=types.SimpleNamespace(folder=str(out)))
    fake = types.SimpleNamespace(JobEnvironment=lambda: env,
                                 helpers=types.SimpleNamespace(DelayedSubmission=lambda trainer: ("requeue", trainer)))
    monkeypatch.setitem(sys.modules, "submitit", fake)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    trainer = run_with_submitit.Trainer(tiny_argv(out, syn, epochs=2, options=["batch_size=1"]), 29500)
    requeued = []

    def submitit_handler(signum, frame):  # what submitit installs for SIGUSR2: checkpoint the job, requeue, exit
        requeued.append(trainer.checkpoint())
        raise SystemExit(-1)

    real_after_step = training._after_step

    def signal_at_iteration_3(run, epoch, tally):  # the cluster's SIGUSR2 arrives during iteration 3
        hook = real_after_step(run, epoch, tally)

        def after_step(done):
            if done == 3:
                os.kill(os.getpid(), signal.SIGUSR2)
            hook(done)
        return after_step

    monkeypatch.setattr(training, "_after_step", signal_at_iteration_3)
    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        with pytest.raises(SystemExit):
            trainer()
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert len(requeued) == 1 and requeued[0][1].main_argv == trainer.main_argv
    position = load_checkpoint(str(out / "checkpoint.pth"))["position"]
    assert (position["epoch"], position["iteration"]) == (0, 3)
