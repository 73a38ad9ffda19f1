"""Noticing that a rank of a distributed run has gone, and naming it.

A rank that dies alone leaves the others waiting in their next collective: gloo notices a closed
connection at once, NCCL waits for the collective timeout and then aborts the process without saying
which peer was missing. So every rank runs a `RankWatch` thread on the process group's key-value store
(the rendezvous TCPStore, which torchrun's agent or rank 0 hosts):

* every `silence_s / BEATS` seconds it adds 1 to its own counter (a heartbeat);
* rank 0 reads every rank's counter, the others read rank 0's; a counter that has not moved for
  BEATS of the reader's own rounds (not wall-clock time, so a job suspended and resumed as a whole
  sees no one silent) names that rank as gone, and rank 0 publishes it for everyone;
* a rank that stops on an error first records that error's line (`leave`), so its peers can say why;
  a rank that finishes normally records that too and is not missed.

When a rank is named gone, `explain` (called by main.py with the exception the collective raised)
returns the one-line `PeerLostError`; if the main thread is stuck in a collective that never returns,
the thread itself logs the line and ends the process with EXIT_PEER_LOST after grace_s().
"""
import json
import logging
import os
import sys
import threading
from typing import Dict, List, Optional

BEATS = 6  # heartbeats per silence_s; a rank silent for this many rounds is gone
EXIT_PEER_LOST = 2  # the status of a one-line error (main.py)
STORE_FAILED = -1  # pseudo rank: the store itself (hosted by rank 0 or the launcher) cannot be reached

log = logging.getLogger("detr")


class PeerLostError(RuntimeError):
    """Another rank of this run stopped (died or failed); the message names it and is one line."""


class RankWatch:
    """The heartbeat thread of one rank (see the module docstring). `prefix` keeps this launch's keys apart
    from an earlier one in the same store (torchrun's agent keeps its store across restarts)."""

    def __init__(self, store, rank: int, world_size: int, silence_s: float, prefix: str):
        self.store, self.rank, self.world_size = store, rank, world_size
        self.silence_s = silence_s
        self.interval = silence_s / BEATS
        self.prefix = prefix
        self.lost: Optional[str] = None  # which rank is gone and why, once one is named
        self._found = threading.Event()
        self._stop = threading.Event()
        self._last: Dict[int, int] = {}
        watched = range(1, world_size) if rank == 0 else [0]
        self._silent: Dict[int, int] = {r: 0 for r in watched}
        self._thread = threading.Thread(target=self._run, name=f"rank-watch-{rank}", daemon=True)

    def start(self) -> "RankWatch":
        self._thread.start()
        return self

    def _key(self, *parts) -> str:
        return "/".join([self.prefix, *map(str, parts)])

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.store.add(self._key("beat", self.rank), 1)
                reason = self._check()
            except Exception as e:  # the store is gone with its host
                reason = self._describe(STORE_FAILED, f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"
                                        if str(e).strip() else type(e).__name__)
            if reason and not self._stop.is_set():
                self._name_lost(reason)
                return

    def _check(self) -> Optional[str]:
        """The reason a rank is gone, or None: a published loss, a rank that left with an error, or a silent one."""
        if self.store.add(self._key("lost"), 0):
            return self.store.get(self._key("lost_reason")).decode()
        left = self._left()
        failed = [(r, why) for r, why in left if why is not None]
        if failed:
            return self._describe(*failed[0])
        finished = {r for r, _ in left}
        for r in self._silent:
            beats = self.store.add(self._key("beat", r), 0)
            self._silent[r] = 0 if beats != self._last.get(r) else self._silent[r] + 1
            self._last[r] = beats
            if self._silent[r] >= BEATS and r not in finished:
                return self._describe(r, None)
        return None

    def _left(self) -> List[tuple]:
        """(rank, error line or None for a normal finish) of every rank that left, in the order they left."""
        count = self.store.add(self._key("left"), 0)
        keys = [self._key("left", i) for i in range(1, count + 1)]
        # a key counted but not yet written (its rank is writing it now) is read in the next round
        entries = [json.loads(self.store.get(k).decode()) for k in keys if self.store.check([k])]
        return [(e["rank"], e["reason"]) for e in entries]

    def _describe(self, rank: int, reason: Optional[str]) -> str:
        """Which rank is gone and why, as the first part of the line (rank 0 publishes this part)."""
        if rank == STORE_FAILED:
            return (f"the run's rendezvous store (MASTER_ADDR:MASTER_PORT, hosted by rank 0 or the launcher) stopped "
                    f"answering ({reason}): rank 0 or the launcher is gone")
        if reason is not None:
            return f"rank {rank} stopped: {reason}"
        return (f"rank {rank} stopped responding (no heartbeat for {self.silence_s:g} s: killed, crashed, "
                f"or its node is down)")

    def line(self) -> str:
        """This rank's one-line message once a rank is named gone."""
        return (f"{self.lost}; this rank ({self.rank}) stops too; rerun the same command to resume from the newest "
                f"checkpoint")

    def _name_lost(self, reason: str) -> None:
        self.lost = reason
        if self.rank == 0:
            try:  # tell every rank, each of which watches only rank 0
                self.store.set(self._key("lost_reason"), reason)
                self.store.add(self._key("lost"), 1)
            except Exception:
                pass
        self._found.set()
        if self._stop.wait(grace_s(self.silence_s)):  # the main thread took it over (explain / leave)
            return
        log.error(self.line())
        print(f"error: {self.line()}", file=sys.stderr, flush=True)
        os._exit(EXIT_PEER_LOST)  # the main thread is stuck in a collective that will not return

    def explain(self, wait_s: float) -> Optional[PeerLostError]:
        """After an error came out of a collective: a PeerLostError naming the rank that is gone, waiting up
        to `wait_s` for the watch to find it; None when no rank is missing (the error is this rank's own)."""
        if self._found.wait(wait_s) and self.lost:
            return PeerLostError(self.line())
        return None

    def leave(self, reason: Optional[str]) -> None:
        """Record that this rank stops (`reason`: its error line, None when it finished) and stop the thread."""
        self._stop.set()
        try:
            order = self.store.add(self._key("left"), 1)
            self.store.set(self._key("left", order), json.dumps({"rank": self.rank, "reason": reason}))
        except Exception:
            pass  # the store may be gone already; the peers then notice the silence instead
        self._thread.join(timeout=5)


def grace_s(silence_s: float) -> float:
    """How long the main thread has to stop by itself once a rank is named gone (room for a checkpoint
    write in progress) before the watch ends the process."""
    return 5.0 + silence_s / 4


def wait_budget(silence_s: float) -> float:
    """How long `explain` may wait: a silent rank is named after BEATS rounds (rank 0), then read from
    the store by the others in their next round; two rounds and a second of slack."""
    return silence_s * (BEATS + 2) / BEATS + 1.0
