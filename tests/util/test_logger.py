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


def test_terminal_gets_compact_lines_info_txt_the_full_ones(tmp_path):
    console, info = progress(Terminal(), tmp_path)
    lines = [x for x in console.splitlines() if "Epoch: [4]" in x and "total time" not in x]
    assert len(lines) == 2  # iterations 0 and 2 (print_freq 2, the last)
    assert "Epoch: [4] 1/3  eta 0:00:00  loss 0.0000  lr 1.00e-04  " in lines[0]
    assert "Epoch: [4] 3/3" in lines[1] and "loss 2.0000" in lines[1]
    assert lines[1].split("  ")[-2].endswith(" it/s") and lines[1].endswith(" MiB")
    assert "loss_bbox" not in console and not re.search(r"time: [0-9.]+s", console)
    assert "Epoch: [4] total time" in console
    assert info.count("loss_bbox: 0.2500 (0.2500)") == 2 and "it/s" not in info  # full lines only
    assert "Epoch: [4] [2/3] eta: 0:00:00  loss: 2.0000 (1.0000)" in info


def test_pipe_gets_the_full_lines_as_info_txt(tmp_path):
    console, info = progress(io.StringIO(), tmp_path)
    assert "it/s" not in console and console.count("loss_bbox: 0.2500") == 2
    assert [x.split("] ", 1)[1] for x in console.splitlines()] == [x.split("] ", 1)[1] for x in info.splitlines()]


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
    assert "Predict: 1/1  eta 0:00:00  " in out and "loss" not in out and " lr " not in out


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
