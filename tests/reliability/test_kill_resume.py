"""SIGKILL a training run at several moments, auto-resume it, and get bit-identical final weights.

Kills: (1) in the middle of epoch 0, (2) right after checkpoint0000.pth is written,
(3) in the middle of writing checkpoint.pth of epoch 1 (temp file written, rename not done).
Before the last resume one byte of a weight in the newest checkpoint (checkpoint.pth) is flipped
(the file stays readable), so its integrity check fails and auto-resume must fall back to
checkpoint0000.pth and say so. The reference is an uninterrupted run with
the same seed, run concurrently (both single-threaded on CPU).
"""
import os
import signal

from util.checkpoint import TMP_PREFIX, load_checkpoint

from reliability_helpers import (
    differing_tensors,
    flip_byte_in_largest_weight,
    info_text,
    make_synthetic,
    popen_main,
    read_log,
    tiny_argv,
    wait_for,
    weights,
)

EPOCHS = 3
TIMEOUT_S = 240


def kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_at_three_moments_then_resume_gives_identical_weights(tmp_path):
    syn = make_synthetic(str(tmp_path / "syn"))
    ref_out, out = str(tmp_path / "reference"), str(tmp_path / "killed")
    reference = popen_main(tiny_argv(ref_out, syn, epochs=EPOCHS))
    argv = tiny_argv(out, syn, epochs=EPOCHS)
    kills = resumes = 0

    # 1. in the middle of the first epoch: no checkpoint exists yet
    p = popen_main(argv)
    wait_for(p, lambda: "Epoch: [0] [0/2]" in info_text(out), "the first iteration")
    kill(p)
    kills += 1
    assert not [n for n in os.listdir(out) if n.endswith(".pth")]

    # 2. right after the epoch-0 checkpoint (before its evaluation and log line)
    marker = str(tmp_path / "saved0")
    p = popen_main(argv, hook=f"after_save:checkpoint0000.pth:{marker}")
    resumes += 1  # an empty output_dir: starts again from scratch
    wait_for(p, lambda: os.path.exists(marker), "checkpoint0000.pth")
    kill(p)
    kills += 1
    assert load_checkpoint(os.path.join(out, "checkpoint0000.pth"))["epoch"] == 0

    # 3. during the save of epoch 1's checkpoint.pth: the temp file exists, the old file is intact
    marker = str(tmp_path / "saving1")
    p = popen_main(argv, hook=f"before_rename:checkpoint.pth:{marker}")
    resumes += 1
    wait_for(p, lambda: os.path.exists(marker), "the checkpoint.pth write of epoch 1")
    kill(p)
    kills += 1
    assert [n for n in os.listdir(out) if n.startswith(TMP_PREFIX)], "the stalled temp file should be left"
    assert load_checkpoint(os.path.join(out, "checkpoint.pth"))["epoch"] == 0

    # 4. corrupt one weight byte of the newest checkpoint; auto-resume falls back to checkpoint0000.pth
    corrupted = flip_byte_in_largest_weight(os.path.join(out, "checkpoint.pth"))
    p = popen_main(argv)
    resumes += 1
    assert p.wait(timeout=TIMEOUT_S) == 0, open(os.path.join(out, "run.log")).read()[-3000:]
    assert reference.wait(timeout=TIMEOUT_S) == 0, open(os.path.join(ref_out, "run.log")).read()[-3000:]

    info = info_text(out)
    assert (f"auto-resume: skipping {os.path.join(out, 'checkpoint.pth')}: integrity check failed: "
            f"tensor 'model/{corrupted}' differs") in info
    assert f"auto-resume: found {os.path.join(out, 'checkpoint0000.pth')}" in info
    assert "unfinished checkpoint write" in info
    assert not [n for n in os.listdir(out) if n.startswith(TMP_PREFIX)]

    final, ref = weights(os.path.join(out, "checkpoint.pth")), weights(os.path.join(ref_out, "checkpoint.pth"))
    assert load_checkpoint(os.path.join(out, "checkpoint.pth"))["epoch"] == EPOCHS - 1
    assert differing_tensors(final, ref) == []
    # the resumed epochs logged exactly the reference's losses
    ref_log = {e["epoch"]: e for e in read_log(ref_out)}
    entries = read_log(out)
    # epoch 0's line was lost by kill 2 and written again (evaluation only) by the next resume
    assert [e["epoch"] for e in entries] == [0, 1, 2] and entries[0]["recovered"] is True
    assert entries[0]["test_loss"] == ref_log[0]["test_loss"]
    for entry in entries[1:]:
        assert entry["train_loss"] == ref_log[entry["epoch"]]["train_loss"]
        assert entry["test_coco_eval_bbox"] == ref_log[entry["epoch"]]["test_coco_eval_bbox"]
    print(f"kills={kills} resumes={resumes} tensors={len(final)} identical=True")
