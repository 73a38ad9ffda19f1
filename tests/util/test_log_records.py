"""util/log_records.py: the one log.txt reader/writer and its policy for damaged files."""
import json
import logging

import pytest

from util.log_records import LogRecordError, append_log_record, read_log_records


def write(path, text):
    path.write_text(text)
    return str(path)


def test_reads_records_in_order_and_ignores_blank_lines(tmp_path):
    p = write(tmp_path / "log.txt", '{"epoch": 0}\n\n{"epoch": 1, "x": [1, 2]}\n')
    assert read_log_records(p) == [{"epoch": 0}, {"epoch": 1, "x": [1, 2]}]


def test_half_written_last_line_is_skipped_with_a_warning(tmp_path, caplog, monkeypatch):
    p = write(tmp_path / "log.txt", '{"epoch": 0}\n{"epoch": 1, "train_lo')
    monkeypatch.setattr(logging.getLogger("detr"), "propagate", True)  # setup_logger turns it off
    with caplog.at_level(logging.WARNING, logger="detr"):
        assert read_log_records(p) == [{"epoch": 0}]
    assert "log.txt:2: skipped a half-written last line" in caplog.text


@pytest.mark.parametrize("bad,problem", [("{not json", "not JSON"), ("[1, 2]", "a JSON list, not an object")])
def test_corrupt_line_in_the_middle_is_an_error(tmp_path, bad, problem):
    p = write(tmp_path / "log.txt", f'{{"epoch": 0}}\n{bad}\n{{"epoch": 1}}\n')
    with pytest.raises(LogRecordError) as err:
        read_log_records(p)
    msg = str(err.value)
    assert f"log.txt:2: line is {problem}" in msg and "fix or delete that line" in msg and "\n" not in msg


def test_missing_file(tmp_path):
    with pytest.raises(LogRecordError, match="no such file"):
        read_log_records(str(tmp_path / "log.txt"))
    assert read_log_records(str(tmp_path / "log.txt"), missing_ok=True) == []


def test_append_after_a_kill_cuts_the_fragment_so_the_new_record_survives(tmp_path):
    p = write(tmp_path / "log.txt", '{"epoch": 0}\n{"epoch": 1, "train_lo')
    append_log_record(p, {"epoch": 1, "train_loss": 2.0})
    assert (tmp_path / "log.txt").read_text() == '{"epoch": 0}\n{"epoch": 1, "train_loss": 2.0}\n'
    assert read_log_records(p)[-1] == {"epoch": 1, "train_loss": 2.0}


def test_append_completes_a_whole_record_missing_its_newline(tmp_path):
    p = write(tmp_path / "log.txt", '{"epoch": 0}')
    append_log_record(p, {"epoch": 1})
    assert read_log_records(p) == [{"epoch": 0}, {"epoch": 1}]


def test_append_creates_the_file(tmp_path):
    p = str(tmp_path / "log.txt")
    append_log_record(p, {"a": 1.5})
    append_log_record(p, {"b": None})
    assert [json.loads(x) for x in (tmp_path / "log.txt").read_text().splitlines()] == [{"a": 1.5}, {"b": None}]
