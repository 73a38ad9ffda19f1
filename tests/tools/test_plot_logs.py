"""tools/plot_logs.py: curves from log.txt files; clear errors for bad logs."""
import json

import pytest

from tools import plot_logs

from cli_errors import user_error


def write_log(path, epochs):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [{"epoch": e, "train_loss": 10.0 - e, "test_coco_eval_bbox": [0.1 * e] + [0.0] * 11} for e in range(epochs)]
    lines.append({"test_coco_eval_bbox": [0.5] * 12})  # an eval-only line is skipped
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return str(path)


def test_reads_epoch_lines(tmp_path):
    s = plot_logs.read_log(write_log(tmp_path / "a" / "log.txt", 3))
    assert s == {"epoch": [0, 1, 2], "loss": [10.0, 9.0, 8.0], "ap": [0.0, 0.1, 0.2]}


def test_plots_two_logs_to_png(tmp_path):
    a, b = write_log(tmp_path / "a" / "log.txt", 3), write_log(tmp_path / "b" / "log.txt", 2)
    out = tmp_path / "plots" / "curves.png"
    plot_logs.main([a, b, "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_half_written_last_line_is_skipped(tmp_path):
    # the log main.py resumes from after a kill while appending
    path = write_log(tmp_path / "a" / "log.txt", 2)
    with open(path, "a") as f:
        f.write('{"epoch": 2, "train_lo')
    assert plot_logs.read_log(path)["epoch"] == [0, 1]


@pytest.mark.parametrize("content,msg", [('not json\n{"epoch": 0}\n', r"log.txt:1: line is not JSON"),
                                         ('{"x": 1}\n', "no epoch lines")])
def test_bad_logs(tmp_path, content, msg, capsys):
    p = tmp_path / "log.txt"
    p.write_text(content)
    with user_error(capsys, msg):
        plot_logs.main([str(p), "--out", str(tmp_path / "o.png")])
    with user_error(capsys, "no such file"):
        plot_logs.main([str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o.png")])
    with user_error(capsys, "one per log"):
        plot_logs.main([write_log(tmp_path / "a" / "log.txt", 1), "--out", "x.png", "--labels", "a", "b"])
