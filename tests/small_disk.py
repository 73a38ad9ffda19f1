"""A small filesystem for the full-disk tests.

Where the machine allows it (root on Linux, `mount` available) the folder is a size-limited tmpfs, so
writes fail with the kernel's own ENOSPC. Elsewhere the same folder stays on the ordinary disk and
util/disk.py's writes go through a hook that models a disk of the same capacity: a write that would
take the folder's files past it writes what fits and raises ENOSPC, as the kernel does.
"""
import errno
import os
import subprocess

from util import disk


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


class _CappedFile:
    """A file of util/disk.py in a capped folder: each write lands on disk at once (flushed), and a write
    past the capacity writes the part that fits, then raises ENOSPC."""

    def __init__(self, f, folder: str, capacity: int):
        self._f, self._folder, self._capacity = f, folder, capacity

    def write(self, data):
        room = self._capacity - folder_bytes(self._folder)
        if len(data) > room:
            if room > 0:
                self._f.write(data[:room])
                self._f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = self._f.write(data)
        self._f.flush()
        return written

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


class SmallDisk:
    """A folder with about `capacity` bytes of room; `mounted` says whether it is a real tmpfs."""

    def __init__(self, path: str, capacity: int, mounted: bool):
        self.path, self.capacity, self.mounted = path, capacity, mounted

    def fill(self, leave: int = 0) -> None:
        """Take all but about `leave` bytes of the free room with a filler file (written outside util/disk)."""
        filler = os.path.join(self.path, "filler")
        chunk = b"\0" * 4096
        with open(filler, "ab", buffering=0) as f:
            if not self.mounted:
                f.write(b"\0" * max(0, self.capacity - folder_bytes(self.path) - leave))
                return
            try:
                while True:
                    f.write(chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC
        if leave:
            os.truncate(filler, max(0, os.path.getsize(filler) - leave))


def _try_mount(path: str, capacity: int) -> bool:
    if os.name != "posix" or os.geteuid() != 0:
        return False
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={capacity}", "tmpfs", path],
                              capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


CAPACITY = 512 * 1024


def small_disk_at(path: str, kind: str, monkeypatch) -> SmallDisk:
    """A SmallDisk of CAPACITY bytes at `path` (created): kind 'tmpfs' mounts one where allowed, else (and for
    kind 'hook') util/disk.py's writes are capped by a hook (see the module docstring). Call unmount after."""
    os.makedirs(path)
    mounted = kind == "tmpfs" and _try_mount(path, CAPACITY)
    if not mounted:
        real_open = disk._open

        def capped_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            inside = os.path.abspath(file).startswith(path + os.sep)
            return _CappedFile(f, path, CAPACITY) if inside and any(c in mode for c in "wa") else f

        monkeypatch.setattr(disk, "_open", capped_open)
    return SmallDisk(path, CAPACITY, mounted)


def unmount(small: SmallDisk) -> None:
    if small.mounted:
        subprocess.run(["umount", "-l", small.path], capture_output=True, timeout=20)
