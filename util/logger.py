"""Text logging (console and info.txt) and smoothed training meters.

Progress lines come in two forms (see MetricLogger.log_every): a full line with every
meter, written to info.txt, and a compact one (epoch, iteration/total, ETA, loss, lr,
it/s, peak memory). On a terminal the console shows the compact line and colours the
WARNING/ERROR level names (termcolor; NO_COLOR turns that off); on a pipe
or in CI it shows the full lines, exactly what info.txt gets, so nothing is lost there.
"""
import datetime
import logging
import os
import resource
import sys
import time
from collections import deque
from typing import Dict, Iterable, Optional, TextIO

import torch
from termcolor import colored

LOGGER_NAME = "detr"
PROGRESS_FULL, PROGRESS_COMPACT = "full", "compact"  # the `progress` attribute of progress records
LEVEL_COLOURS = {"WARNING": "yellow", "ERROR": "red", "CRITICAL": "red"}
_DATEFMT = "%m/%d %H:%M:%S"


class _DropProgress(logging.Filter):
    """Lets every record through except progress records of the given form."""

    def __init__(self, form: str):
        super().__init__()
        self.form = form

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "progress", None) != self.form


class _ColourLevelFormatter(logging.Formatter):
    """The usual format with the WARNING / ERROR level names coloured (used on a terminal)."""

    def format(self, record: logging.LogRecord) -> str:
        colour = LEVEL_COLOURS.get(record.levelname)
        if colour is None:
            return super().format(record)
        plain = record.levelname
        # forced: setup_logger decided (the stream is a terminal); termcolor would check sys.stdout
        record.levelname = colored(plain, colour, attrs=["bold"], force_color=True)
        try:
            return super().format(record)
        finally:
            record.levelname = plain  # other handlers (info.txt) get the plain name


def _is_tty(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _colour_wanted() -> bool:
    """False when the user turned colours off (https://no-color.org, termcolor's ANSI_COLORS_DISABLED)."""
    return not (os.environ.get("NO_COLOR") or os.environ.get("ANSI_COLORS_DISABLED"))


# log.info(..., extra={FILE_ONLY: True}): info.txt only, e.g. a 2,000-character list the console
# summarises in one line
FILE_ONLY = "file_only"


def setup_logger(output_dir: Optional[str], rank: int = 0, name: str = LOGGER_NAME,
                 stream: Optional[TextIO] = None) -> logging.Logger:
    """Logger writing to `stream` (default stdout; rank 0 only) and output_dir/info.txt
    (rank 0; other ranks info.txt.rank{N}). info.txt always gets the full progress lines;
    the console gets the compact ones when `stream` is a terminal, else the full ones."""
    log = logging.getLogger(name)
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    fmt_str = "[%(asctime)s %(levelname)s] %(message)s"
    fmt = logging.Formatter(fmt_str, datefmt=_DATEFMT)
    if rank == 0:
        stream = sys.stdout if stream is None else stream
        tty = _is_tty(stream)
        console = logging.StreamHandler(stream)
        console.setFormatter(_ColourLevelFormatter(fmt_str, datefmt=_DATEFMT) if tty and _colour_wanted() else fmt)
        console.addFilter(_DropProgress(PROGRESS_FULL if tty else PROGRESS_COMPACT))
        console.addFilter(lambda record: not getattr(record, FILE_ONLY, False))
        log.addHandler(console)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        fname = "info.txt" if rank == 0 else f"info.txt.rank{rank}"
        fh = logging.FileHandler(os.path.join(output_dir, fname))
        fh.setFormatter(fmt)
        fh.addFilter(_DropProgress(PROGRESS_COMPACT))
        log.addHandler(fh)
    return log


def peak_memory_mib(device: Optional[torch.device] = None) -> float:
    """Peak memory so far in MiB: CUDA max_memory_allocated on a CUDA device, else this
    process's peak resident set size (ru_maxrss; data-loader workers not included)."""
    if device is not None and torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


class SmoothedValue:
    """Running window median/avg plus the global average of a scalar series."""

    def __init__(self, window: int = 20):
        self.values = deque(maxlen=window)
        self.total = 0.0
        self.count = 0

    def update(self, value: float, n: int = 1) -> None:
        self.values.append(value)
        self.total += value * n
        self.count += n

    @property
    def avg(self) -> float:
        return sum(self.values) / max(1, len(self.values))

    @property
    def global_avg(self) -> float:
        return self.total / max(1, self.count)

    @property
    def value(self) -> float:
        return self.values[-1] if self.values else 0.0


class MetricLogger:
    """Collects meters and logs progress every `print_freq` iterations (see log_every)."""

    def __init__(self, log: logging.Logger, print_freq: int = 10, device: Optional[torch.device] = None):
        self.meters: Dict[str, SmoothedValue] = {}
        self.log = log
        self.print_freq = print_freq
        self.device = device  # whose peak memory the compact line reports

    def update(self, **values: float) -> None:
        for k, v in values.items():
            self.meters.setdefault(k, SmoothedValue()).update(float(v))

    def global_averages(self) -> Dict[str, float]:
        return {k: m.global_avg for k, m in self.meters.items()}

    def compact_line(self, header: str, done: int, total: int, eta: datetime.timedelta,
                     it_time: SmoothedValue) -> str:
        """'<header> done/total eta H:MM:SS loss X lr Y N it/s mem M MiB' (loss / lr only when metered)."""
        parts = [f"{header} {done}/{total}", f"eta {eta}"]
        if "loss" in self.meters:
            parts.append(f"loss {self.meters['loss'].value:.4f}")
        if "lr" in self.meters:
            parts.append(f"lr {self.meters['lr'].value:.2e}")
        parts.append(f"{1.0 / it_time.avg:.2f} it/s" if it_time.avg > 0 else "- it/s")
        parts.append(f"mem {peak_memory_mib(self.device):.0f} MiB")
        return "  ".join(parts)

    def log_every(self, iterable: Iterable, header: str, total: Optional[int] = None, first: int = 0):
        """Yield from iterable; at iteration 0, every print_freq-th and the last, log the full
        line (every meter's latest value and global average, iteration time) and the compact
        line, tagged so that setup_logger's handlers pick one each. `first`: the number of the
        first item (an epoch resumed in its middle); `total` counts from 0."""
        total = total if total is not None else len(iterable)  # type: ignore[arg-type]
        start = last = time.time()
        it_time = SmoothedValue()
        for i, item in enumerate(iterable, first):
            yield item
            now = time.time()
            it_time.update(now - last)
            last = now
            if i % self.print_freq == 0 or i == total - 1:
                eta = datetime.timedelta(seconds=int(it_time.global_avg * max(0, total - i - 1)))
                meters = "  ".join(f"{k}: {m.value:.4f} ({m.global_avg:.4f})" for k, m in self.meters.items())
                self.log.info("%s [%d/%d] eta: %s  %s  time: %.3fs", header, i, total, eta, meters, it_time.value,
                              extra={"progress": PROGRESS_FULL})
                self.log.info("%s", self.compact_line(header, i + 1, total, eta, it_time),
                              extra={"progress": PROGRESS_COMPACT})
        self.log.info("%s total time: %s", header, datetime.timedelta(seconds=int(time.time() - start)))
