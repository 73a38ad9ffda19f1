"""Test-only launcher: runs main.cli() with an optional hook that stalls a checkpoint save.

RELIABILITY_HOOK="<when>:<file name>:<marker path>" (read only by this script):
  when=after_save     once <file name> has been fully saved, create the marker and sleep,
                      so the test can SIGKILL the run right after an epoch checkpoint;
  when=before_rename  once the temp file for <file name> is written but before the rename,
                      create the marker and sleep, so the kill lands in the middle of a save.
Only the first matching save triggers. Without the variable this is plain `python main.py`.
"""
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import main  # noqa: E402
from engine import training  # noqa: E402
from util import checkpoint  # noqa: E402

STALL_S = 120


def _stall(marker: str) -> None:
    with open(marker, "w") as f:
        f.write("stalled\n")
    time.sleep(STALL_S)


def install_hook(spec: str) -> None:
    when, name, marker = spec.split(":", 2)
    fired = []
    if when == "after_save":
        original = training.save_checkpoint

        def save_then_stall(obj, path):
            original(obj, path)
            if os.path.basename(path) == name and not fired:
                fired.append(path)
                _stall(marker)

        training.save_checkpoint = save_then_stall
    elif when == "before_rename":
        original_replace = os.replace

        def stall_then_replace(src, dst, *a, **kw):
            if (os.path.basename(str(src)).startswith(checkpoint.TMP_PREFIX)
                    and os.path.basename(str(dst)) == name and not fired):
                fired.append(dst)
                _stall(marker)
            return original_replace(src, dst, *a, **kw)

        checkpoint.os.replace = stall_then_replace  # same os module object: affects this process only
    else:
        raise SystemExit(f"hooked_main.py: unknown hook {when!r}")


if __name__ == "__main__":
    if os.environ.get("RELIABILITY_HOOK"):
        install_hook(os.environ["RELIABILITY_HOOK"])
    sys.exit(main.cli(sys.argv[1:]))
