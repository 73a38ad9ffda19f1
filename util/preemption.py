"""Stopping a run cleanly when the cluster asks it to.

Signals: SIGTERM (SLURM preemption, the time limit, scancel; torchrun passes its own SIGTERM on to the
workers), SIGUSR1 (`sbatch --signal=USR1@90`) and SIGUSR2 (submitit's default `--signal=USR2@90`).
The handler only records the signal. The training loop looks at it at the end of the iteration in
progress (every rank agreeing, engine/training.py), writes a checkpoint and raises `Preempted`; the
evaluation loop stops at the end of its batch (the epoch's checkpoint is already written). main.py
then exits with EXIT_PREEMPTED. The same signal a second time while the stop is pending takes that
signal's default action (for SIGTERM: exit at once), so an impatient second kill still works.

DataLoader workers forked while the handlers are installed inherit them, so a SIGTERM sent to the
whole process group (SLURM signals every process of a job step) does not kill a worker mid-batch.
"""
import os
import signal
import threading
from typing import Callable, Dict, Optional

EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: a temporary failure; run the same command again to continue
PREEMPTION_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2")


class Preempted(Exception):
    """The run stopped on a preemption signal (one-line message). `hand_over()` passes the signal on to the
    handler that was installed before this module's (submitit's requeue handler under run_with_submitit.py)."""

    def __init__(self, message: str, signum: Optional[int], previous: Optional[Callable] = None):
        super().__init__(message)
        self.signum = signum
        self.previous = previous

    def hand_over(self) -> bool:
        """Call the handler that preceded ours for this signal, if it was a Python function; True if one ran."""
        if not callable(self.previous):
            return False
        self.previous(self.signum, None)
        return True


class SignalWatch:
    """Records the first preemption signal; install() / restore() bracket a run (main thread only)."""

    def __init__(self):
        self.received: Optional[int] = None
        self._previous: Dict[int, object] = {}

    def install(self) -> bool:
        """Install the handlers; False (nothing installed) outside the main thread, where Python refuses."""
        if threading.current_thread() is not threading.main_thread():
            return False
        self.received = None
        for name in PREEMPTION_SIGNALS:
            signum = getattr(signal, name, None)
            if signum is not None:
                self._previous[signum] = signal.signal(signum, self._handle)
        return True

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.received == signum:  # the second time: the signal's own action
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.received is None:
            self.received = signum

    @property
    def requested(self) -> bool:
        return self.received is not None

    def stop(self, message: str) -> Preempted:
        """The Preempted exception, `message` prefixed with the signal's name (a rank that got no signal
        itself stops because another did)."""
        if self.received is None:
            return Preempted(f"stopped by a preemption signal to another rank {message}", None)
        name = signal.Signals(self.received).name
        return Preempted(f"stopped by {name} {message}", self.received, self._previous.get(self.received))


WATCH = SignalWatch()  # the process's one watch: signal handlers are per process
