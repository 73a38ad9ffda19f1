"""One rank of a 2-process run (gloo, CPU, launched directly as srun does) dies or hangs alone: the other
stops within a bounded time with one line naming it, instead of waiting in its collective forever.

rank_silence_s=2 (util/rank_watch.py); the collective timeout (collective_timeout_minutes=5) is far
longer than the test allows, so only the rank watch can end these runs in time.
"""
import os
import signal
import time

import pytest

from reliability_helpers import info_text, make_synthetic, popen_ranks, tiny_argv, wait_for

OPTIONS = ["batch_size=1", "rank_silence_s=2", "collective_timeout_minutes=5"]
BOUND_S = 60  # generous for a loaded 2-core machine; about 5 s when idle
HERE = "rerun the same command to resume from the newest checkpoint"


@pytest.mark.parametrize("victim, how, expected", [
    (1, signal.SIGKILL, "error: rank 1 stopped responding (no heartbeat for 2 s: killed, crashed, or its node is "
                        f"down); this rank (0) stops too; {HERE}"),
    (1, signal.SIGSTOP, "error: rank 1 stopped responding (no heartbeat for 2 s: killed, crashed, or its node is "
                        f"down); this rank (0) stops too; {HERE}"),
    (0, signal.SIGKILL, "error: the run's rendezvous store (MASTER_ADDR:MASTER_PORT, hosted by rank 0 or the "
                        "launcher) stopped answering"),
], ids=["rank1-killed", "rank1-hangs", "rank0-killed"])
def test_the_other_rank_stops_naming_the_lost_one(tmp_path, victim, how, expected):
    syn = make_synthetic(str(tmp_path / "syn"))
    out = str(tmp_path / "out")
    ranks = popen_ranks(tiny_argv(out, syn, epochs=50, options=OPTIONS))
    survivor = ranks[1 - victim]
    try:
        wait_for(survivor, lambda: "Epoch: [0] [0/4]" in info_text(out), "the first iteration")
        ranks[victim].send_signal(how)
        start = time.monotonic()
        code = survivor.wait(timeout=BOUND_S)
        elapsed = time.monotonic() - start
    finally:
        for p in ranks:
            if p.poll() is None:
                p.kill()
                p.wait()
    log = open(os.path.join(out, f"run.rank{1 - victim}.log")).read()
    assert code == 2, log[-3000:]
    assert expected in log, log[-3000:]
    assert "Traceback" not in log
    print(f"rank {victim} {signal.Signals(how).name}: rank {1 - victim} stopped after {elapsed:.1f} s")
