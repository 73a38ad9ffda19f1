"""A 2-process run (gloo, CPU, ranks launched directly as srun does) stopped twice and resumed: the final
weights and log equal an uninterrupted 2-process run's.

1. SIGUSR1 to rank 1 alone: both ranks agree to stop after the same iteration, rank 0 writes the
   mid-epoch checkpoint, both exit with status 75;
2. the rerun is SIGKILLed as a whole (both ranks at once) at a random moment: whatever checkpoint.pth
   then holds (mid-epoch checkpoints every 2 iterations, epoch checkpoints) is complete;
3. the second rerun takes over the lock the killed run left and finishes.

8 images at batch 1 on 2 ranks = 4 iterations per epoch, 2 epochs.
"""
import os
import random
import signal
import time

from util.checkpoint import load_checkpoint
from util.preemption import EXIT_PREEMPTED

from reliability_helpers import (
    differing_tensors,
    info_text,
    make_synthetic,
    popen_ranks,
    read_log,
    tiny_argv,
    wait_for,
    weights,
)

OPTIONS = ["batch_size=1", "checkpoint_every_iters=2"]
ITERATIONS = 4  # per rank and epoch
TIMEOUT_S = 300


def finish(procs, expected=0, out=None):
    codes = [p.wait(timeout=TIMEOUT_S) for p in procs]
    logs = "".join(open(os.path.join(out, f"run.rank{r}.log")).read()[-1500:] for r in range(len(procs))) if out else ""
    assert codes == [expected] * len(procs), logs
    return codes


def test_two_processes_stopped_by_signal_then_killed_resume_to_identical_weights(tmp_path):
    syn = make_synthetic(str(tmp_path / "syn"))
    ref_out, out = str(tmp_path / "reference"), str(tmp_path / "interrupted")
    reference = popen_ranks(tiny_argv(ref_out, syn, epochs=2, options=OPTIONS))
    argv = tiny_argv(out, syn, epochs=2, options=OPTIONS)

    # 1. SIGUSR1 to rank 1 only, once the first mid-epoch checkpoint is written
    ranks = popen_ranks(argv)
    wait_for(ranks[0], lambda: "Epoch: [0] [0/4]" in info_text(out), "the first iteration")
    ranks[1].send_signal(signal.SIGUSR1)
    finish(ranks, EXIT_PREEMPTED, out)
    position = load_checkpoint(os.path.join(out, "checkpoint.pth"))["position"]
    done = position["iteration"]
    assert position["world_size"] == 2 and len(position["ranks"]) == 2
    tail = f"at epoch {position['epoch']} iteration {done} of {ITERATIONS}: wrote {os.path.join(out, 'checkpoint.pth')}"
    assert f"preempted: stopped by SIGUSR1 {tail}" in open(os.path.join(out, "run.rank1.log")).read()
    assert f"preempted: stopped by a preemption signal to another rank {tail}" in open(
        os.path.join(out, "run.rank0.log")).read()

    # 2. the rerun, SIGKILLed as a whole at a random moment of its training
    ranks = popen_ranks(argv)
    wait_for(ranks[0], lambda: "continuing epoch" in info_text(out), "the resumed training")
    time.sleep(random.uniform(0.0, 4.0))
    for p in ranks:
        p.send_signal(signal.SIGKILL)
    assert [p.wait(timeout=TIMEOUT_S) for p in ranks] == [-signal.SIGKILL] * 2

    # 3. the same command again: takes over the killed run's lock, resumes from what checkpoint.pth holds
    ranks = popen_ranks(argv)
    finish(ranks, 0, out)
    finish(reference, 0, ref_out)
    assert "took over " + os.path.join(out, "run.lock") + " from host" in info_text(out)  # the killed run's
    assert "run.lock" not in os.listdir(out)  # released by the run that finished

    final, ref = weights(os.path.join(out, "checkpoint.pth")), weights(os.path.join(ref_out, "checkpoint.pth"))
    assert differing_tensors(final, ref) == []
    ref_log = {e["epoch"]: e for e in read_log(ref_out)}
    for entry in read_log(out):
        if not entry.get("recovered"):
            assert entry["train_loss"] == ref_log[entry["epoch"]]["train_loss"]
        assert entry["test_coco_eval_bbox"] == ref_log[entry["epoch"]]["test_coco_eval_bbox"]
    print(f"stopped by SIGUSR1 after iteration {done}, then SIGKILLed; final weights identical ({len(final)} tensors)")
