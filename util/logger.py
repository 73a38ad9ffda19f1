"""Text logging (console and info.txt) and smoothed training meters.

Progress lines come in two forms (see MetricLogger.log_every): a full line with every
meter (about 50 loss terms), written to info.txt, and a compact one for the console, on a
terminal and in a pipe or SLURM log alike (under 120 characters with the time stamp):
epoch, iteration/total, ETA, the total loss and its three main terms (the last decoder
layer's unscaled classification, L1 and GIoU losses), lr in scientific notation, it/s and
peak memory. On a terminal the WARNING/ERROR level names are coloured (termcolor; NO_COLOR
turns that off). Every value ever logged is in info.txt, and every epoch's averages in log.txt.
"""
import datetime
import logging
import os
import re
import resource
import sys
import time
from collections import deque
from typing import Dict, Iterable, Optional, TextIO

import torch
from termcolor import colored

from util import cpu_threads

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


class _ConsoleFormatter(logging.Formatter):
    """The console's format: '[time] message' for INFO (the level adds nothing there and costs 5 of a
    line's 120 columns), '[time LEVEL] message' otherwise, the level coloured when `colour`."""

    def __init__(self, colour: bool):
        super().__init__("[%(asctime)s %(levelname)s] %(message)s", datefmt=_DATEFMT)
        self.colour = colour
        self.info = logging.Formatter("[%(asctime)s] %(message)s", datefmt=_DATEFMT)

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno == logging.INFO:
            return self.info.format(record)
        colour = LEVEL_COLOURS.get(record.levelname) if self.colour else None
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
# the loss terms of the console line: (shown as, meter) = the last decoder layer's unscaled losses
MAIN_TERMS = (("ce", "loss_ce_unscaled"), ("l1", "loss_bbox_unscaled"), ("giou", "loss_giou_unscaled"))
EPOCH_HEADER = re.compile(r"^Epoch: \[(\d+)\]$")  # the training loop's header, 'epoch N' in the console line


def setup_logger(output_dir: Optional[str], rank: int = 0, name: str = LOGGER_NAME,
                 stream: Optional[TextIO] = None) -> logging.Logger:
    """Logger writing to `stream` (default stdout; rank 0 only) and output_dir/info.txt
    (rank 0; other ranks info.txt.rank{N}). info.txt gets the full progress lines, the console
    the compact ones (see the module docstring)."""
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
        console.setFormatter(_ConsoleFormatter(colour=tty and _colour_wanted()))
        console.addFilter(_DropProgress(PROGRESS_FULL))
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


def _number(name: str, value: float) -> str:
    """A meter's value in a full progress line: the learning rate in scientific notation (2.5e-05, not
    0.0000), the others with 4 decimals."""
    return f"{value:.2e}" if name == "lr" else f"{value:.4f}"


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
        """'epoch E done/total eta H:MM:SS loss X (ce a l1 b giou c) lr Y N it/s M MiB' ('Test:' etc. keep
        their header; loss, its terms and lr only when metered)."""
        short_header = EPOCH_HEADER.sub(r"epoch \1", header)
        parts = [f"{short_header} {done}/{total}", f"eta {eta}"]
        if "loss" in self.meters:
            terms = " ".join(f"{short} {self.meters[k].value:.3f}" for short, k in MAIN_TERMS if k in self.meters)
            parts.append(f"loss {self.meters['loss'].value:.2f}" + (f" ({terms})" if terms else ""))
        if "lr" in self.meters:
            parts.append(f"lr {self.meters['lr'].value:.1e}")
        parts.append(f"{1.0 / it_time.avg:.2f} it/s" if it_time.avg > 0 else "- it/s")
        parts.append(f"{peak_memory_mib(self.device):.0f} MiB")
        return " ".join(parts)

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
            cpu_threads.between_iterations()  # follows the free CPU cores (util/cpu_threads.py)
            now = time.time()
            it_time.update(now - last)
            last = now
            if i % self.print_freq == 0 or i == total - 1:
                eta = datetime.timedelta(seconds=int(it_time.global_avg * max(0, total - i - 1)))
                meters = "  ".join(f"{k}: {_number(k, m.value)} ({_number(k, m.global_avg)})"
                                   for k, m in self.meters.items())
                self.log.info("%s [%d/%d] eta: %s  %s  time: %.3fs", header, i, total, eta, meters, it_time.value,
                              extra={"progress": PROGRESS_FULL})
                self.log.info("%s", self.compact_line(header, i + 1, total, eta, it_time),
                              extra={"progress": PROGRESS_COMPACT})
        self.log.info("%s total time: %s", header, datetime.timedelta(seconds=int(time.time() - start)))
