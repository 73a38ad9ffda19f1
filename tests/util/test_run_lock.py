"""output_dir/run.lock (util/run_lock.py): a live holder on this host or another refuses a second run with
one line naming it; a dead pid, an old or a frozen heartbeat is taken over with a warning."""
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from util.run_lock import LOCK_NAME, RunLock, RunLockError

BEAT_S = 0.1


def write_lock(folder, **fields):
    record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time() - 60,
              "heartbeat": time.time(), "heartbeat_s": BEAT_S, "token": "theirs", "command": "main.py -c other.py"}
    record.update(fields)
    with open(os.path.join(folder, LOCK_NAME), "w") as f:
        json.dump(record, f)
    return record


def read_lock(folder):
    with open(os.path.join(folder, LOCK_NAME)) as f:
        return json.load(f)


@pytest.fixture
def sleeper():
    """A live process of this host that is not this one."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield p
    p.kill()
    p.wait()


def test_acquire_writes_host_pid_heartbeat_and_release_removes(tmp_path):
    lock = RunLock(str(tmp_path), BEAT_S, command="main.py -c x.py")
    assert lock.acquire() is None
    record = read_lock(tmp_path)
    assert record["host"] == socket.gethostname() and record["pid"] == os.getpid()
    assert record["command"] == "main.py -c x.py"
    first = record["heartbeat"]
    time.sleep(BEAT_S * 4)
    assert read_lock(tmp_path)["heartbeat"] > first  # the heartbeat thread rewrites it
    lock.release()
    assert not os.path.exists(tmp_path / LOCK_NAME)


def test_live_process_of_this_host_refuses_with_one_line(tmp_path, sleeper):
    write_lock(str(tmp_path), pid=sleeper.pid)
    with pytest.raises(RunLockError) as err:
        RunLock(str(tmp_path), BEAT_S).acquire()
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"{tmp_path} is in use by another training run: host {socket.gethostname()} pid "
                           f"{sleeper.pid} (started ")
    assert "command: main.py -c other.py" in text and text.endswith("or train into another --output_dir")
    assert read_lock(tmp_path)["token"] == "theirs"  # untouched


def test_dead_pid_of_this_host_is_taken_over_with_a_warning(tmp_path, sleeper):
    write_lock(str(tmp_path), pid=sleeper.pid)
    sleeper.kill()
    sleeper.wait()
    lock = RunLock(str(tmp_path), BEAT_S)
    warning = lock.acquire()
    assert warning.startswith(f"took over {tmp_path / LOCK_NAME} from host {socket.gethostname()} pid {sleeper.pid}")
    assert f"its process {sleeper.pid} is gone (killed or crashed)" in warning and lock.took_over == warning
    assert read_lock(tmp_path)["token"] == lock.record["token"]
    assert [n for n in os.listdir(tmp_path) if n != LOCK_NAME] == []  # the stale lock moved aside, then removed
    lock.release()


def test_other_host_with_an_old_heartbeat_is_taken_over_at_once(tmp_path):
    write_lock(str(tmp_path), host="node-elsewhere", heartbeat=time.time() - 100 * BEAT_S)
    start = time.monotonic()
    lock = RunLock(str(tmp_path), BEAT_S)
    assert "its heartbeat is" in lock.acquire() and time.monotonic() - start < 1.0
    lock.release()


def test_other_host_with_a_beating_heartbeat_refuses(tmp_path):
    record = write_lock(str(tmp_path), host="node-elsewhere")
    stop = threading.Event()

    def beat():  # the other host's run, alive
        while not stop.wait(BEAT_S):
            write_lock(str(tmp_path), **{**record, "heartbeat": time.time()})

    thread = threading.Thread(target=beat)
    thread.start()
    try:
        with pytest.raises(RunLockError, match="in use by another training run: host node-elsewhere"):
            RunLock(str(tmp_path), BEAT_S).acquire()
    finally:
        stop.set()
        thread.join()


def test_other_host_with_a_frozen_recent_heartbeat_is_watched_then_taken_over(tmp_path):
    write_lock(str(tmp_path), host="node-elsewhere")  # recent by the clocks, but nobody refreshes it
    start = time.monotonic()
    lock = RunLock(str(tmp_path), BEAT_S)
    assert "its heartbeat did not change for" in lock.acquire()
    assert time.monotonic() - start >= 3 * BEAT_S
    lock.release()


def test_holder_notices_a_take_over(tmp_path):
    lock = RunLock(str(tmp_path), BEAT_S)
    lock.acquire()
    write_lock(str(tmp_path), host="node-elsewhere", token="intruder")
    deadline = time.time() + 5
    while lock.lost is None and time.time() < deadline:
        time.sleep(BEAT_S)
    assert lock.lost and lock.lost.startswith("host node-elsewhere pid")
    lock.release()
    assert read_lock(tmp_path)["token"] == "intruder"  # not ours any more: left in place
