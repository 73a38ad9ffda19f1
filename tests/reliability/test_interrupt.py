"""Ctrl-C ends main.py with one line saying how to resume and exit status 130 (issue 26, item 10)."""
import os
import signal
import subprocess
import sys
import time

import main
from util.checkpoint import save_checkpoint

from reliability_helpers import ROOT, make_synthetic, tiny_argv


def test_ctrl_c_after_a_checkpoint_says_how_to_resume(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run-%t"

    def interrupted(args, lock=None):
        os.makedirs(args.output_dir, exist_ok=True)
        save_checkpoint({"model": {}, "epoch": 3}, os.path.join(args.output_dir, "checkpoint.pth"))
        raise KeyboardInterrupt

    monkeypatch.setattr(main, "settle_output_dir", lambda args: setattr(args, "output_dir", str(tmp_path / "run-1")))
    monkeypatch.setattr(main, "build_run", interrupted)
    assert main.cli(["--output_dir", str(out), "--seed", "3"]) == 130
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"interrupted (Ctrl-C); to resume from {tmp_path / 'run-1' / 'checkpoint.pth'} (epoch 3 done), "
                     f"run the same command: `python main.py --seed 3 --output_dir {tmp_path / 'run-1'}`"]


def test_ctrl_c_of_a_real_run_is_one_line(tmp_path):
    """SIGINT to a training main.py: one stderr line, exit status 130, no traceback."""
    syn = make_synthetic(str(tmp_path / "syn"))
    argv = tiny_argv(tmp_path / "out", syn, epochs=50)
    proc = subprocess.Popen([sys.executable, "main.py", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 240
    while not os.path.isfile(tmp_path / "out" / "checkpoint.pth") and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130 and len(lines) == 1, err[-3000:]
    assert lines[0].startswith(f"interrupted (Ctrl-C); to resume from {tmp_path / 'out' / 'checkpoint.pth'} (epoch ")
    assert lines[0].endswith(f"--output_dir {tmp_path / 'out'}`")
