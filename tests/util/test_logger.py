"""util/logger.py: console vs info.txt progress lines (terminal and pipe), level colours, meters."""
import io
import logging
import re

import numpy as np
import pytest

from util.logger import FILE_ONLY, LOGGER_NAME, MetricLogger, peak_memory_mib, setup_logger


class Terminal(io.StringIO):
    def isatty(self):
        return True


def progress(stream, tmp_path, n=3, print_freq=2):
    """Run MetricLogger over n items (loss i, lr 1e-4) with the logger on `stream` and tmp_path/info.txt."""
    log = setup_logger(str(tmp_path), stream=stream)
    meters = MetricLogger(log, print_freq)
    for i in meters.log_every(range(n), "Epoch: [4]", n):
        meters.update(loss=float(i), lr=1e-4, loss_bbox=0.25)
    for h in log.handlers:
        h.flush()
    return stream.getvalue(), (tmp_path / "info.txt").read_text()


@pytest.mark.parametrize("stream", [Terminal(), io.StringIO()])  # a terminal, and a pipe / SLURM log alike
def test_console_gets_compact_lines_info_txt_the_full_ones(tmp_path, stream):
    console, info = progress(stream, tmp_path)
    lines = [x for x in console.splitlines() if "epoch 4 " in x]
    assert len(lines) == 2  # iterations 0 and 2 (print_freq 2, the last)
    assert "] epoch 4 1/3 eta 0:00:00 loss 0.00 lr 1.0e-04 " in lines[0]
    assert "epoch 4 3/3" in lines[1] and "loss 2.00" in lines[1]
    assert re.search(r" \d+\.\d\d it/s \d+ MiB$", lines[1])
    assert "loss_bbox" not in console and not re.search(r"time: [0-9.]+s", console)
    assert "Epoch: [4] total time" in console
    assert info.count("loss_bbox: 0.2500 (0.2500)") == 2 and "it/s" not in info  # full lines only
    assert "Epoch: [4] [2/3] eta: 0:00:00  loss: 2.0000 (1.0000)  lr: 1.00e-04 (1.00e-04)" in info


def test_console_line_fits_120_columns_with_the_main_terms_and_a_small_lr(tmp_path):
    """A DINO training line (about 50 loss terms) stays short on the console; lr 2.5e-5 is not 0.0000."""
    terms = {f"loss_{k}{s}": 0.5 for k in ("ce", "bbox", "giou") for s in ["", "_0", "_1", "_2", "_3", "_4",
                                                                            "_interm", "_dn", "_dn_0", "_dn_1"]}
    terms.update({f"{k}_unscaled": v for k, v in terms.items()})
    stream = io.StringIO()
    log = setup_logger(str(tmp_path), stream=stream)
    meters = MetricLogger(log, 1)
    for _ in meters.log_every([0], "Epoch: [11]", 9999):  # the first of 9999 iterations
        meters.update(loss=23.4567, lr=2.5e-5, **dict(terms, loss_ce_unscaled=0.812, loss_bbox_unscaled=0.0456,
                                                      loss_giou_unscaled=0.3012))
    line = stream.getvalue().splitlines()[0]
    assert len(line) <= 120, (len(line), line)
    assert re.fullmatch(r"\[\d\d/\d\d \d\d:\d\d:\d\d\] epoch 11 1/9999 eta \d+:\d\d:\d\d loss 23.46 "
                        r"\(ce 0.812 l1 0.046 giou 0.301\) lr 2.5e-05 [\d.]+ it/s \d+ MiB", line), line
    assert "lr: 2.50e-05 (2.50e-05)" in (tmp_path / "info.txt").read_text()


def test_file_only_records_skip_the_console(tmp_path):
    stream = io.StringIO()
    log = setup_logger(str(tmp_path), stream=stream)
    log.info("full list: %s", "x" * 50, extra={FILE_ONLY: True})
    log.info("short line")
    for h in log.handlers:
        h.flush()
    info = (tmp_path / "info.txt").read_text()
    assert "full list: " + "x" * 50 in info and "short line" in info
    assert "full list" not in stream.getvalue() and "short line" in stream.getvalue()


def test_compact_line_without_lr_or_loss(tmp_path):
    log = setup_logger(None, stream=Terminal())
    meters = MetricLogger(log, 10)
    for _ in meters.log_every([0], "Predict:", 1):
        pass
    out = log.handlers[0].stream.getvalue()
    assert "Predict: 1/1 eta 0:00:00 " in out and "loss" not in out and " lr " not in out


@pytest.mark.parametrize("stream,coloured", [(Terminal(), True), (io.StringIO(), False)])
def test_warning_level_coloured_on_a_terminal_only(tmp_path, monkeypatch, stream, coloured):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("ANSI_COLORS_DISABLED", raising=False)
    log = setup_logger(str(tmp_path), stream=stream)
    log.warning("careful")
    log.info("plain")
    for h in log.handlers:
        h.flush()
    out = stream.getvalue()
    assert ("\x1b[" in out.splitlines()[0]) is coloured and "\x1b[" not in out.splitlines()[1]
    assert "WARNING" in out and "careful" in out
    assert "\x1b[" not in (tmp_path / "info.txt").read_text()


def test_no_color_env_disables_colours(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    log = setup_logger(None, stream=Terminal())
    log.warning("careful")
    assert "\x1b[" not in log.handlers[0].stream.getvalue()


def test_other_ranks_log_no_console_and_full_lines_to_their_file(tmp_path):
    log = setup_logger(str(tmp_path), rank=1)
    assert len(log.handlers) == 1
    meters = MetricLogger(log, 1)
    for _ in meters.log_every([0], "Test:", 1):
        meters.update(loss=1.0)
    log.handlers[0].flush()
    text = (tmp_path / "info.txt.rank1").read_text()
    assert "Test: [0/1]" in text and "it/s" not in text


def test_cpu_peak_memory_is_the_process_peak_rss():
    before = peak_memory_mib()
    block = np.ones(96 * 2**20 // 8)  # 96 MiB, touched
    assert peak_memory_mib() >= before and peak_memory_mib() > 96
    del block


def teardown_module():
    logging.getLogger(LOGGER_NAME).handlers.clear()
