"""Text logging (info.txt) and smoothed training meters."""
import datetime
import logging
import os
import sys
import time
from collections import deque
from typing import Dict, Iterable, Optional

LOGGER_NAME = "detr"


def setup_logger(output_dir: Optional[str], rank: int = 0, name: str = LOGGER_NAME) -> logging.Logger:
    """Logger writing to stdout (rank 0) and output_dir/info.txt (rank 0; other ranks info.txt.rank{N})."""
    log = logging.getLogger(name)
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    fmt = logging.Formatter("[%(asctime)s %(levelname)s] %(message)s", datefmt="%m/%d %H:%M:%S")
    if rank == 0:
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(fmt)
        log.addHandler(console)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        fname = "info.txt" if rank == 0 else f"info.txt.rank{rank}"
        fh = logging.FileHandler(os.path.join(output_dir, fname))
        fh.setFormatter(fmt)
        log.addHandler(fh)
    return log


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
    """Collects meters and logs one line every `print_freq` iterations with eta and time."""

    def __init__(self, log: logging.Logger, print_freq: int = 10):
        self.meters: Dict[str, SmoothedValue] = {}
        self.log = log
        self.print_freq = print_freq

    def update(self, **values: float) -> None:
        for k, v in values.items():
            self.meters.setdefault(k, SmoothedValue()).update(float(v))

    def global_averages(self) -> Dict[str, float]:
        return {k: m.global_avg for k, m in self.meters.items()}

    def log_every(self, iterable: Iterable, header: str, total: Optional[int] = None):
        """Yield from iterable, logging progress (eta, meters, iteration time) periodically."""
        total = total if total is not None else len(iterable)  # type: ignore[arg-type]
        start = last = time.time()
        it_time = SmoothedValue()
        for i, item in enumerate(iterable):
            yield item
            now = time.time()
            it_time.update(now - last)
            last = now
            if i % self.print_freq == 0 or i == total - 1:
                eta = datetime.timedelta(seconds=int(it_time.global_avg * max(0, total - i - 1)))
                meters = "  ".join(f"{k}: {m.value:.4f} ({m.global_avg:.4f})" for k, m in self.meters.items())
                self.log.info("%s [%d/%d] eta: %s  %s  time: %.3fs", header, i, total, eta, meters, it_time.value)
        self.log.info("%s total time: %s", header, datetime.timedelta(seconds=int(time.time() - start)))
