"""tools/collect_results.py, tools/plot_emca_weights.py and the ablation scripts."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import collect_results  # noqa: E402
import plot_emca_weights  # noqa: E402

from cli_errors import user_error  # noqa: E402


def write_log(path, aps):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "log.txt"), "w") as f:
        for epoch, ap in enumerate(aps):
            stats = [ap, ap + 0.1, ap + 0.05, ap / 2, ap, ap * 1.5] + [0.0] * 6
            f.write(json.dumps({"epoch": epoch, "train_loss": 1.0, "test_coco_eval_bbox": stats}) + "\n")


def test_collect_results_prints_the_papers_columns(tmp_path):
    write_log(tmp_path / "dino", [0.30, 0.40])
    write_log(tmp_path / "aug", [0.50, 0.45])
    out = collect_results.table([str(tmp_path / "dino"), str(tmp_path / "aug"), str(tmp_path / "missing")],
                                ["DINO", "AugDETR", "lost"])
    lines = out.splitlines()
    assert lines[0] == "| run | epoch | AP | AP50 | AP75 | APs | APm | APl |"
    assert lines[2] == "| DINO | 1 | 40.0 | 50.0 | 45.0 | 20.0 | 40.0 | 60.0 |"
    assert lines[3].startswith("| AugDETR | 1 | 45.0 |")
    assert "n/a" in lines[4]
    best = collect_results.table([str(tmp_path / "aug")], ["AugDETR"], which="best").splitlines()[2]
    assert best.startswith("| AugDETR | 0 | 50.0 |")


def test_collect_results_and_plot_logs_skip_evaluation_lines(tmp_path):
    """--eval lines (marked mode=eval, e.g. a --debug subset) and old unmarked eval lines never stand for the run."""
    from plot_logs import read_log
    write_log(tmp_path / "run", [0.30, 0.32])
    with open(tmp_path / "run" / "log.txt", "a") as f:
        f.write(json.dumps({"mode": "eval", "debug": True, "test_coco_eval_bbox": [0.9] * 12}) + "\n")
        f.write(json.dumps({"test_coco_eval_bbox": [0.8] * 12}) + "\n")
    for which in ("last", "best"):
        assert collect_results.table([str(tmp_path / "run")], which=which).splitlines()[2].startswith(
            "| run | 1 | 32.0 |")
    assert read_log(str(tmp_path / "run" / "log.txt"))["ap"] == [0.30, 0.32]


def test_collect_results_reads_logs_as_main_does(tmp_path, capsys):
    write_log(tmp_path / "run", [0.30, 0.40])
    with open(tmp_path / "run" / "log.txt", "a") as f:
        f.write('{"epoch": 2, "test_coco_ev')  # killed while appending: skipped
    assert collect_results.table([str(tmp_path / "run")]).splitlines()[2].startswith("| run | 1 | 40.0 |")
    with open(tmp_path / "run" / "log.txt", "a") as f:
        f.write('\n{"epoch": 3}\n')  # ...but a corrupt line in the middle is an error naming it
    with user_error(capsys, r"^collect_results.py: error: .*log.txt:3: line is not JSON"):
        collect_results.main([str(tmp_path / "run")])


def test_plot_emca_weights_writes_a_png(tmp_path, capsys):
    paths = []
    for name, mean in [("a", [0.3, 0.2, 0.1]), ("b", [0.1, 0.2, 0.3])]:
        d = tmp_path / name
        d.mkdir()
        (d / "emca_weights.json").write_text(json.dumps({"enc_layers": [1, 2, 3], "mean": mean, "std": [0.01] * 3}))
        paths.append(str(d / "emca_weights.json"))
    out = tmp_path / "w.png"
    plot_emca_weights.main(paths + ["--out", str(out), "--normalize"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with user_error(capsys, "lacks"):
        plot_emca_weights.main([str(bad)])


@pytest.mark.parametrize("script", ["ablation_table4.sh", "ablation_table6.sh", "ablation_table9.sh"])
def test_ablation_scripts_parse_and_check_their_arguments(script, tmp_path):
    path = os.path.join(ROOT, "scripts", script)
    assert subprocess.run(["bash", "-n", path]).returncode == 0
    usage = subprocess.run(["bash", path], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr
    bad = subprocess.run(["bash", path, str(tmp_path / "nope"), "8"], capture_output=True, text=True)
    assert bad.returncode == 2 and "COCO_PATH" in bad.stderr
