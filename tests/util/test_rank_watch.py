"""RankWatch (util/rank_watch.py) on an in-process store: a silent rank is named, a rank that stops on an
error is named with its line, a rank that finishes is not missed. (Real processes: tests/reliability/
test_lost_rank.py.)"""
import time

import pytest
import torch.distributed as dist

from util.rank_watch import RankWatch, wait_budget

SILENCE_S = 0.6


@pytest.fixture
def pair():
    store = dist.HashStore()
    watches = [RankWatch(store, r, 2, SILENCE_S, "test").start() for r in range(2)]
    yield watches
    for w in watches:
        w.leave(None)  # stops the threads before their grace (5 s) would end this process


def test_a_silent_rank_is_named_by_rank_0_and_published_to_the_others():
    store = dist.HashStore()
    watches = [RankWatch(store, r, 3, SILENCE_S, "test").start() for r in range(3)]
    try:
        watches[2]._stop.set()  # rank 2 dies: no more heartbeats, no goodbye
        start = time.monotonic()
        lost = watches[0].explain(wait_budget(SILENCE_S))
        assert lost is not None and time.monotonic() - start < wait_budget(SILENCE_S)
        assert str(lost) == ("rank 2 stopped responding (no heartbeat for 0.6 s: killed, crashed, or its node is "
                             "down); this rank (0) stops too; rerun the same command to resume from the newest "
                             "checkpoint")
        assert str(watches[1].explain(wait_budget(SILENCE_S))).startswith(
            "rank 2 stopped responding (no heartbeat for 0.6 s")  # rank 1 watches only rank 0: published
        assert "this rank (1) stops too" in str(watches[1].explain(0))
    finally:
        for w in watches:
            w.leave(None)


def test_a_rank_that_stops_on_an_error_is_named_with_its_line(pair):
    pair[1].leave("could not write /out/checkpoint.pth: No space left on device (errno 28); ...")
    lost = pair[0].explain(wait_budget(SILENCE_S))
    assert str(lost).startswith("rank 1 stopped: could not write /out/checkpoint.pth: No space left on device")


def test_a_rank_that_finished_is_not_missed(pair):
    pair[1].leave(None)
    assert pair[0].explain(3 * SILENCE_S) is None
