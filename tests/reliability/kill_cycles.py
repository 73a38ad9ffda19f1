"""Many whole-job SIGKILLs at random moments of a tiny 2-process run, then the final weights vs an
uninterrupted 2-process run (the suite's test_distributed_resume.py does one such kill).

    python tests/reliability/kill_cycles.py [--cycles 20] [--epochs 6] [--seed 0] [--min_delay 0]
                                            [--max_delay 10] [--workdir DIR]

Ranks are launched directly (as srun does), gloo on the CPU, single-threaded; the tiny synthetic run of
reliability_helpers with batch 1 on 8 images (4 iterations per rank and epoch), --epochs epochs, a
mid-epoch checkpoint every iteration. Each cycle starts the same command and, once it is past its
start-up (rank 0 logged its data line), SIGKILLs both ranks after a random delay: in an iteration, an
evaluation, or a checkpoint write. Once the cycles are spent or the last epoch's checkpoint is written,
the command runs to the end. Prints one
line per cycle and the verdict; exit status 0 when the final weights equal the reference's bit for bit.
"""
import argparse
import os
import random
import signal
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(os.path.dirname(HERE)), os.path.dirname(HERE), HERE]

from util.checkpoint import load_resume_checkpoint  # noqa: E402

from reliability_helpers import (  # noqa: E402
    differing_tensors,
    info_text,
    make_synthetic,
    popen_ranks,
    tiny_argv,
    weights,
)

OPTIONS = ["batch_size=1", "checkpoint_every_iters=1"]
BUILT = "] data: test_dropped_boxes="  # rank 0's info.txt line once data and model are built


def newest_checkpoint(out: str):
    """(where auto-resume will continue from, in words; the last completed epoch, -1 before the first)."""
    found = load_resume_checkpoint(out)
    if found is None:
        return "no checkpoint yet: the next run starts from scratch", -1
    path, ckpt = found
    at = ckpt.get("position")
    where = f"epoch {at['epoch']} after iteration {at['iteration']}" if at else f"after epoch {ckpt['epoch']}"
    return f"resumes from {os.path.basename(path)} ({where})", int(ckpt["epoch"])


def wait_all(procs, timeout_s=600):
    return [p.wait(timeout=timeout_s) for p in procs]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cycles", type=int, default=20, help="kills to try")
    p.add_argument("--epochs", type=int, default=6, help="epochs of the tiny run")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    p.add_argument("--min_delay", type=float, default=0.0, help="seconds after the start-up, at least")
    p.add_argument("--max_delay", type=float, default=10.0, help="seconds after the start-up, at most")
    p.add_argument("--workdir", default=None, help="where the runs go (default: a new temp folder, kept)")
    a = p.parse_args(argv)
    rng = random.Random(a.seed)
    work = a.workdir or tempfile.mkdtemp(prefix="kill-cycles-")
    syn = make_synthetic(os.path.join(work, "syn"))
    ref_out, out = os.path.join(work, "reference"), os.path.join(work, "killed")
    reference = popen_ranks(tiny_argv(ref_out, syn, epochs=a.epochs, options=OPTIONS))
    assert wait_all(reference) == [0, 0], f"the reference run failed: see {ref_out}/run.rank*.log"
    argv = tiny_argv(out, syn, epochs=a.epochs, options=OPTIONS)
    kills = 0
    for cycle in range(a.cycles):
        started = info_text(out).count(BUILT)
        ranks = popen_ranks(argv)
        while info_text(out).count(BUILT) == started and all(r.poll() is None for r in ranks):
            time.sleep(0.05)  # past the start-up (imports, data, model): a kill there tests nothing new
        delay = rng.uniform(a.min_delay, a.max_delay)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and all(r.poll() is None for r in ranks):
            time.sleep(0.05)
        if any(r.poll() is not None for r in ranks):  # finished (or failed) before the kill
            codes = wait_all(ranks)
            print(f"cycle {cycle}: the run ended by itself, {delay:.1f} s after its start-up, with {codes}", flush=True)
            break
        for r in ranks:
            r.send_signal(signal.SIGKILL)
        wait_all(ranks)
        kills += 1
        where, completed = newest_checkpoint(out)
        print(f"cycle {cycle}: SIGKILL of both ranks {delay:.1f} s after the start-up; {where}", flush=True)
        if completed == a.epochs - 1:
            break
    codes = wait_all(popen_ranks(argv))
    assert codes == [0, 0], f"the final run failed with {codes}: see {out}/run.rank*.log"
    differ = differing_tensors(weights(os.path.join(out, "checkpoint.pth")),
                               weights(os.path.join(ref_out, "checkpoint.pth")))
    print(f"{kills} whole-job SIGKILLs at random moments, then a full run: final weights "
          f"{'identical to' if not differ else f'DIFFERENT ({len(differ)} tensors) from'} the uninterrupted "
          f"2-process run's; runs in {work}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
