"""The preemption signal watch (util/preemption.py): records the first signal, a second one of the same kind
takes its default action, restore() puts the previous handlers back, hand_over() calls the one it replaced."""
import os
import signal
import subprocess
import sys
import threading

from util.preemption import PREEMPTION_SIGNALS, SignalWatch


def test_records_the_first_signal_and_restores_the_previous_handlers():
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda s, f: calls.append(s))
    watch = SignalWatch()
    try:
        assert watch.install()
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR1)  # another kind: the first one stays recorded
        assert watch.requested and watch.received == signal.SIGUSR2
        stop = watch.stop("at epoch 0 iteration 3 of 8: wrote x")
        assert str(stop) == "stopped by SIGUSR2 at epoch 0 iteration 3 of 8: wrote x"
        watch.restore()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert stop.hand_over() and calls == [signal.SIGUSR2]  # the handler it replaced, called once
    finally:
        watch.restore()
        signal.signal(signal.SIGUSR2, previous)


def test_a_rank_without_a_signal_says_another_rank_got_one():
    stop = SignalWatch().stop("during an evaluation")
    assert str(stop) == "stopped by a preemption signal to another rank during an evaluation"
    assert not stop.hand_over()


def test_not_installed_outside_the_main_thread():
    result = []
    thread = threading.Thread(target=lambda: result.append(SignalWatch().install()))
    thread.start()
    thread.join()
    assert result == [False]


def test_second_sigterm_kills_at_once():
    code = ("import os, signal, time; from util.preemption import SignalWatch; w = SignalWatch(); w.install(); "
            "os.kill(os.getpid(), signal.SIGTERM); assert w.requested; print('first recorded', flush=True); "
            "os.kill(os.getpid(), signal.SIGTERM); time.sleep(5); print('survived')")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGTERM and proc.stdout == "first recorded\n"
    assert PREEMPTION_SIGNALS == ("SIGTERM", "SIGUSR1", "SIGUSR2")
