"""Writes into a run's folder that must never leave a half-written file, and their failures as one line.

`atomic_file` writes to a temp file in the target's folder, fsyncs it and moves it over the target
(os.replace, then the folder is fsynced), so a kill or a failed write at any moment leaves the old
complete file; on a failure the temp file is removed. `append_text` appends and, when the write fails,
cuts the file back to its old size. A failed write (a full disk: ENOSPC, a quota: EDQUOT, or any other
OSError) becomes a `DiskWriteError` whose one line names the file, the free space on its filesystem and
the size the write needed.

torch.save turns an OSError of the file object it writes to into a RuntimeError ("unexpected pos ...");
the files handed out here remember the first exception of their writes, so the cause is still reported
(an OSError as DiskWriteError; Ctrl-C's KeyboardInterrupt as itself, so main.py's one-line message follows).
"""
import contextlib
import errno
import os
import shutil
import tempfile
from typing import Callable, Iterator, Optional

_open = open  # every write of this module opens its file here (tests replace it to simulate a full disk)

SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
TEMP_PREFIX = ".tmp-"  # every temp file of atomic_file starts so (util/checkpoint.remove_stale_temp_files)


class DiskWriteError(RuntimeError):
    """A write into the run's folder failed (full disk, quota, permissions...); the message is one line."""


def human_bytes(n: Optional[float]) -> str:
    """'562.0 MiB'-style size; 'unknown' for None."""
    if n is None:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def free_bytes(path: str) -> Optional[int]:
    """Free bytes (for this user) on the filesystem of `path` or of its nearest existing parent."""
    folder = os.path.dirname(os.path.abspath(path))
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _umask() -> int:
    """This process's umask, read without changing it where Linux tells (/proc), else by setting it back."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_error(err: OSError, path: str, needed: Optional[int]) -> DiskWriteError:
    """The one-line DiskWriteError of a failed write of `path` that needed about `needed` bytes."""
    reason = os.strerror(err.errno) if err.errno else (str(err) or type(err).__name__)
    fix = ("free space (or point --output_dir elsewhere) and rerun the same command" if err.errno in SPACE_ERRNOS
           else "check the folder (permissions, quota, the filesystem) and rerun the same command")
    return DiskWriteError(f"could not write {path}: {reason} (errno {err.errno}); {human_bytes(free_bytes(path))} "
                          f"free on its filesystem, about {human_bytes(needed)} needed; the files written before "
                          f"are intact: {fix}, which resumes from the newest complete checkpoint")


class _RecordingFile:
    """A binary/text file whose write() remembers the first exception it raised, an OSError or e.g. Ctrl-C's
    KeyboardInterrupt (see the module docstring)."""

    def __init__(self, f):
        self._f = f
        self.error: Optional[BaseException] = None

    def write(self, data):
        try:
            return self._f.write(data)
        except BaseException as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name):
        return getattr(self._f, name)


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "wb", prefix: Optional[str] = None,
                needed: Callable[[], Optional[int]] = lambda: None) -> Iterator[_RecordingFile]:
    """Yield a temp file that replaces `path` once the block completes (see the module docstring).

    prefix: the temp file's name prefix, starting with TEMP_PREFIX (default '.tmp-<name>-'); needed() is the
    size reported when
    the write fails. Any exception removes the temp file; an OSError (also one torch.save hid behind a
    RuntimeError) is raised as DiskWriteError, and another exception torch.save hid (Ctrl-C) as itself."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=prefix or f"{TEMP_PREFIX}{os.path.basename(path)}-", dir=directory)
        os.fchmod(fd, 0o666 & ~_umask())  # as open() would create it (mkstemp makes 0600: unreadable to the group)
        os.close(fd)  # opened again by name below, through _open
    except OSError as e:
        raise write_error(e, path, needed()) from None
    f = None
    try:
        with _open(tmp, mode) as raw:
            f = _RecordingFile(raw)
            yield f
            f.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if isinstance(e, DiskWriteError):
            raise
        cause = e if f is None or f.error is None else f.error  # what torch.save hid, if it hid something
        if isinstance(cause, OSError):
            raise write_error(cause, path, needed()) from None
        if cause is not e:  # e.g. Ctrl-C during torch.save, which it turns into a RuntimeError
            raise cause from None
        raise
    fsync_dir(directory)


def append_text(path: str, text: str) -> None:
    """Append `text` (UTF-8) to `path`; when the write fails the file is cut back to its old size (or
    removed, when this created it) and DiskWriteError raised."""
    old_size = os.path.getsize(path) if os.path.exists(path) else None
    try:
        with _open(path, "a", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        with contextlib.suppress(OSError):
            if old_size is None:
                os.remove(path)
            else:
                os.truncate(path, old_size)
        raise write_error(e, path, len(text.encode("utf-8"))) from None


def fsync_dir(path: str) -> None:
    """fsync a folder, so a rename inside it survives a power loss (skipped where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
