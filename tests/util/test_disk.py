"""A full disk during a checkpoint, log.txt or results write: one line naming the file, the free space and the
size needed; the old file intact; no temp file left (util/disk.py, on tests/small_disk.py's small filesystem)."""
import json
import os
import re

import numpy as np
import pytest
import torch

from engine import write_coco_results
from util.checkpoint import TMP_PREFIX, find_resume_checkpoint, load_checkpoint, save_checkpoint
from util.disk import DiskWriteError, atomic_file, human_bytes
from util.log_records import append_log_record, read_log_records

LINE = re.compile(r"^could not write (?P<path>\S+): No space left on device \(errno 28\); (?P<free>[\d.]+ \w+) free on "
                  r"its filesystem, about (?P<needed>[\d.]+ \w+) needed; the files written before are intact: free "
                  r"space .* rerun the same command, which resumes from the newest complete checkpoint$")


def one_line(err) -> re.Match:
    text = str(err.value)
    assert "\n" not in text
    match = LINE.match(text)
    assert match, text
    return match


def temp_files(folder):
    return [n for n in os.listdir(folder) if n.startswith(".tmp")]


def test_checkpoint_that_does_not_fit_keeps_the_previous_one(small_disk):
    path = os.path.join(small_disk.path, "checkpoint.pth")
    save_checkpoint({"model": {"w": torch.zeros(40_000)}, "epoch": 0}, path)  # 160 KB of 512 KiB
    bigger = {"model": {"w": torch.ones(100_000)}, "epoch": 1}  # 400 KB: with the old file, past the capacity
    with pytest.raises(DiskWriteError) as err:
        save_checkpoint(bigger, path)
    line = one_line(err)
    assert line["path"] == path and line["needed"] == human_bytes(400_000)
    assert temp_files(small_disk.path) == []
    assert find_resume_checkpoint(small_disk.path) == path and load_checkpoint(path)["epoch"] == 0


def test_log_line_that_does_not_fit_leaves_the_log_as_it_was(small_disk):
    path = os.path.join(small_disk.path, "log.txt")
    append_log_record(path, {"epoch": 0, "train_loss": 1.5})
    before = open(path, "rb").read()
    small_disk.fill(leave=100)  # room for part of the line: the write is cut short, then fails
    record = {"epoch": 1, "pad": "x" * 20_000}  # needs new blocks on any filesystem
    with pytest.raises(DiskWriteError) as err:
        append_log_record(path, record)
    line = one_line(err)
    assert line["path"] == path and line["needed"] == human_bytes(len(json.dumps(record)) + 1)
    assert open(path, "rb").read() == before
    assert read_log_records(path) == [{"epoch": 0, "train_loss": 1.5}]


def test_results_that_do_not_fit_leave_no_temp_file_and_the_old_results(small_disk):
    path = os.path.join(small_disk.path, "results.json")
    write_coco_results({1: np.array([[1, 2, 3, 4, 0.5, 1]], dtype=np.float32)}, path)
    before = open(path).read()
    small_disk.fill(leave=20_000)
    many = {i: np.tile(np.array([[10.5, 20.25, 30.125, 40.0625, 0.123456, 3]], dtype=np.float32), (50, 1))
            for i in range(40)}  # 2,000 detections, about 190 KB
    with pytest.raises(DiskWriteError) as err:
        write_coco_results(many, path)
    line = one_line(err)
    assert line["path"] == path
    needed = float(line["needed"].split()[0]) * {"KiB": 1024, "MiB": 2**20}[line["needed"].split()[1]]
    assert 150_000 < needed < 250_000  # estimated from the bytes per detection written so far
    assert temp_files(small_disk.path) == [] and open(path).read() == before


def test_other_os_errors_name_the_file_too(tmp_path, monkeypatch):
    from util import disk

    def refused(file, mode="r", *a, **kw):
        raise PermissionError(13, "Permission denied", file)

    path = str(tmp_path / "log.txt")
    monkeypatch.setattr(disk, "_open", refused)
    with pytest.raises(DiskWriteError, match=r"could not write .*log.txt: Permission denied \(errno 13\); .* free .*"
                                             r"check the folder \(permissions"):
        append_log_record(path, {"epoch": 0})
    with pytest.raises(DiskWriteError, match="checkpoint.pth: Permission denied"):
        save_checkpoint({"model": {"w": torch.zeros(1)}}, str(tmp_path / "checkpoint.pth"))
    assert [n for n in os.listdir(tmp_path) if n.startswith(TMP_PREFIX)] == []


def test_atomic_files_get_the_mode_open_would_give(tmp_path):
    old = os.umask(0o027)
    try:
        save_checkpoint({"model": {"w": torch.zeros(1)}}, str(tmp_path / "checkpoint.pth"))
        write_coco_results({}, str(tmp_path / "results.json"))
    finally:
        os.umask(old)
    for name in ("checkpoint.pth", "results.json"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o640  # group-readable on a shared cluster


def test_ctrl_c_inside_torch_save_stays_a_keyboard_interrupt(tmp_path):
    """torch.save turns an interrupted write into RuntimeError('unexpected pos ...'); atomic_file raises the
    KeyboardInterrupt itself (so main.py prints its one line), keeps the old file and leaves no temp file."""
    path = tmp_path / "checkpoint.pth"
    torch.save({"old": torch.ones(1)}, path)
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(str(path)) as f:
            writes = iter(range(1000))

            def interrupted_write(data, write=f._f.write):
                if next(writes) == 2:
                    raise KeyboardInterrupt
                return write(data)

            f._f.write = interrupted_write
            torch.save({"new": torch.zeros(100_000)}, f)
    assert torch.load(path)["old"].item() == 1 and os.listdir(tmp_path) == ["checkpoint.pth"]
