"""One training run per output folder: output_dir/run.lock names the run that holds the folder.

The lock file is JSON {host, pid, started, heartbeat, heartbeat_s, token, command}; the holder rewrites
`heartbeat` (its wall-clock time) every run_lock_heartbeat_s seconds from a thread. A second start on
the same folder:

* finds no lock: creates it (O_CREAT | O_EXCL, so of two starts racing only one succeeds);
* finds a lock of this host: the holder is alive when its pid is (then: one-line RunLockError naming
  the run); a dead pid means the run was killed, and the lock is taken over with a warning;
* finds a lock of another host: stale (taken over with a warning) when its heartbeat is older than
  STALE_BEATS heartbeats by this host's clock, or does not change while this start watches it for that
  long (so a clock difference between hosts cannot make a live run look dead); a heartbeat that
  changes means a live run: RunLockError.

The holder's heartbeat thread also checks that the lock still holds its token; if another start took
it over (this run's heartbeat had stopped for STALE_BEATS periods, e.g. a suspended job), `lost` says
by whom and the training loop stops without writing into the folder again (engine/training.py).
"""
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from typing import Optional

from util.config_schema import KeyGroup, float_key
from util.disk import atomic_file

RUN_LOCK_KEYS = KeyGroup("run_lock", "one training run per output_dir", {
    "run_lock_heartbeat_s": float_key(
        "the run holding output_dir/run.lock rewrites its heartbeat this often; a lock of another host whose "
        "heartbeat is older than 3 of these, or does not change for that long, is taken over", 0, low_open=True),
})

LOCK_NAME = "run.lock"
STALE_BEATS = 3
log = logging.getLogger("detr")


class RunLockError(RuntimeError):
    """Another live run holds the output folder (one-line message naming it)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def describe_holder(holder: dict) -> str:
    """'host H pid P (started ..., heartbeat N s ago, command: ...)' of a lock's record."""
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    age = time.time() - float(holder.get("heartbeat", 0))
    return (f"host {holder.get('host')} pid {holder.get('pid')} (started {started}, heartbeat {age:.0f} s ago, "
            f"command: {holder.get('command', '?')})")


class RunLock:
    """The lock of `folder` for this process (see the module docstring)."""

    def __init__(self, folder: str, heartbeat_s: float, command: Optional[str] = None):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self.heartbeat_s = heartbeat_s
        self.record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                       "heartbeat": time.time(), "heartbeat_s": heartbeat_s, "token": uuid.uuid4().hex,
                       "command": command if command is not None else " ".join(sys.argv)}
        self.lost: Optional[str] = None  # who took the lock over, once someone did
        self.took_over: Optional[str] = None  # the warning line when this run took a stale lock over
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ---- taking the lock -------------------------------------------------------------------------
    def acquire(self) -> Optional[str]:
        """Hold the lock and start the heartbeat; returns (and keeps in `took_over`) the warning line when a
        stale lock was taken over. RunLockError when a live run holds it."""
        os.makedirs(self.folder, exist_ok=True)
        warning = None
        for _ in range(5):  # each round: create, or judge the holder and move a stale lock aside
            if self._create():
                self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
                self._thread.start()
                self.took_over = warning
                return warning
            holder = self._read(self.path)
            if holder is None:
                continue  # it vanished, or is being written: look again
            stale = self._stale_reason(holder)
            if stale is None:
                raise RunLockError(f"{self.folder} is in use by another training run: {describe_holder(holder)} "
                                   f"(lock file {self.path}); wait for it to finish or stop it, or train into "
                                   f"another --output_dir")
            if self._move_aside(holder):
                warning = (f"took over {self.path} from {describe_holder(holder)}: {stale}; this run continues "
                           f"in that folder")
        raise RunLockError(f"{self.path}: could not take the lock (other starts on this folder kept racing for it); "
                           f"start one run per --output_dir")

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self.record, f)
            f.flush()
            os.fsync(f.fileno())
        return True

    @staticmethod
    def _read(path: str, tries: int = 10) -> Optional[dict]:
        """The lock's record; None if the file is gone. A file being written (empty or cut) is read again
        for up to a second; after that an unreadable lock counts as a record of nobody (stale)."""
        for _ in range(tries):
            try:
                with open(path) as f:
                    text = f.read()
            except FileNotFoundError:
                return None
            try:
                record = json.loads(text)
                if isinstance(record, dict):
                    return record
            except ValueError:
                pass
            time.sleep(0.1)
        return {"host": "?", "pid": -1, "heartbeat": 0, "unreadable": True}

    def _stale_reason(self, holder: dict) -> Optional[str]:
        """Why the holder's lock is stale, or None when its run is alive (see the module docstring)."""
        if holder.get("unreadable"):
            return "the lock file is unreadable"
        if holder.get("host") == self.record["host"]:
            pid = int(holder.get("pid", -1))
            if pid == os.getpid():
                return "it was this process's own, from a run that ended"
            return None if _pid_alive(pid) else f"its process {pid} is gone (killed or crashed)"
        beat_s = float(holder.get("heartbeat_s") or self.heartbeat_s)
        window = STALE_BEATS * beat_s
        age = time.time() - float(holder.get("heartbeat", 0))
        if age > window:
            return f"its heartbeat is {age:.0f} s old (more than {STALE_BEATS} heartbeats of {beat_s:g} s)"
        log.info("%s is held by %s; watching its heartbeat for up to %.0f s to see whether that run is alive",
                 self.path, describe_holder(holder), window)
        deadline = time.monotonic() + window
        while time.monotonic() < deadline:
            time.sleep(min(1.0, beat_s / 4))
            now = self._read(self.path)
            if now is None:
                return "it was released"  # acquire finds no file to move aside and creates its own
            if any(now.get(k) != holder.get(k) for k in ("token", "heartbeat")):
                return None  # alive (or replaced by another start): not ours to take
        return f"its heartbeat did not change for {window:.0f} s"

    def _move_aside(self, holder: dict) -> bool:
        """Rename the stale lock out of the way; False when it changed meanwhile (another start took it)."""
        aside = f"{self.path}.stale-{self.record['token']}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        moved = self._read(aside)
        if moved is not None and moved.get("token") != holder.get("token"):
            os.rename(aside, self.path)  # a fresh lock of a start that won the race: put it back
            return False
        os.remove(aside)
        return True

    # ---- holding it ------------------------------------------------------------------------------
    def _beat(self) -> None:
        warned = False
        while not self._stop.wait(self.heartbeat_s):
            holder = self._read(self.path, tries=3)
            if holder is None or holder.get("token") != self.record["token"]:
                self.lost = describe_holder(holder) if holder else "someone who removed the lock file"
                log.error("%s was taken over by %s; this run stops at the end of its iteration", self.path,
                          self.lost)
                return
            self.record["heartbeat"] = time.time()
            try:
                with atomic_file(self.path, "w") as f:
                    json.dump(self.record, f)
            except Exception as e:  # a full disk (DiskWriteError): the run's own writes report it
                if not warned:
                    log.warning("could not refresh the heartbeat of %s (%s); retrying", self.path, e)
                    warned = True

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still this run's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = self._read(self.path, tries=1)
        if holder is not None and holder.get("token") == self.record["token"]:
            os.remove(self.path)
