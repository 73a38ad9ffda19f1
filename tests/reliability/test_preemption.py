"""SIGTERM to a running training: it finishes the iteration, writes a mid-epoch checkpoint, exits with
status 75, and the rerun continues that epoch to the weights and log of an uninterrupted run.

Tiny synthetic run, single-threaded CPU: 8 images at batch 1 = 8 iterations per epoch, 2 epochs (the
second checks that the epoch after a resumed one starts from its first batch again).
"""
import os
import signal

from util.checkpoint import load_checkpoint
from util.preemption import EXIT_PREEMPTED

from reliability_helpers import (
    differing_tensors,
    info_text,
    make_synthetic,
    popen_main,
    read_log,
    tiny_argv,
    wait_for,
    weights,
)

BATCH_1 = ["batch_size=1"]  # 8 iterations per epoch
ITERATIONS = 8


def test_sigterm_mid_epoch_checkpoints_exits_75_and_resumes_exactly(tmp_path):
    syn = make_synthetic(str(tmp_path / "syn"))
    ref_out, out = str(tmp_path / "reference"), str(tmp_path / "preempted")
    reference = popen_main(tiny_argv(ref_out, syn, epochs=2, options=BATCH_1))
    argv = tiny_argv(out, syn, epochs=2, options=BATCH_1)

    p = popen_main(argv)
    wait_for(p, lambda: "Epoch: [0] [0/8]" in info_text(out), "the first iteration")
    p.send_signal(signal.SIGTERM)  # lands in one of the next iterations of epoch 0
    assert p.wait(timeout=240) == EXIT_PREEMPTED
    ckpt = load_checkpoint(os.path.join(out, "checkpoint.pth"))
    position = ckpt["position"]
    done = position["iteration"]
    assert position["epoch"] == 0 and 1 <= done < ITERATIONS and ckpt["epoch"] == -1
    run_log = open(os.path.join(out, "run.log")).read()
    line = (f"preempted: stopped by SIGTERM at epoch 0 iteration {done} of {ITERATIONS}: wrote "
            f"{os.path.join(out, 'checkpoint.pth')}; rerun the same command to continue from there (exit status 75)")
    assert line in run_log.splitlines(), run_log[-2000:]
    assert not os.path.exists(os.path.join(out, "run.lock"))  # released on the way out

    p = popen_main(argv)  # the same command
    assert p.wait(timeout=240) == 0, open(os.path.join(out, "run.log")).read()[-3000:]
    assert reference.wait(timeout=240) == 0, open(os.path.join(ref_out, "run.log")).read()[-3000:]
    assert f"continuing epoch 0 at iteration {done} of {ITERATIONS} (mid-epoch checkpoint)" in info_text(out)

    assert differing_tensors(weights(os.path.join(out, "checkpoint.pth")),
                             weights(os.path.join(ref_out, "checkpoint.pth"))) == []
    ref_log, log = read_log(ref_out), read_log(out)
    assert [e["epoch"] for e in log] == [0, 1]
    for mine, theirs in zip(log, ref_log):  # the resumed epoch's averages include the iterations before the stop
        assert mine["train_loss"] == theirs["train_loss"] and mine["train_lr"] == theirs["train_lr"]
        assert mine["test_coco_eval_bbox"] == theirs["test_coco_eval_bbox"]
    print(f"preempted after iteration {done} of {ITERATIONS}; iterations lost: 0; final weights identical")
