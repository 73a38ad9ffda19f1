"""scripts/ablation_main_table.sh, tools/collect_results.py --pairs and tools/benchmark_criterion.py."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import benchmark_criterion  # noqa: E402
import collect_results  # noqa: E402

from cli_errors import user_error  # noqa: E402

SCRIPT = os.path.join(ROOT, "scripts", "ablation_main_table.sh")


def write_log(path, ap):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "log.txt"), "w") as f:
        f.write(json.dumps({"epoch": 0, "test_coco_eval_bbox": [ap] + [0.1] * 11}) + "\n")


def test_pairs_table_gives_both_aps_and_the_gain(tmp_path, capsys):
    for name, ap in [("dino", 0.490), ("dino_aug", 0.502), ("align", 0.503), ("align_aug", 0.514)]:
        write_log(tmp_path / name, ap)
    runs = [str(tmp_path / n) for n in ("dino", "dino_aug", "align", "align_aug", "lost", "lost2")]
    lines = collect_results.gain_table(runs, ["DINO", "x", "AlignDETR", "y", "lost", "z"]).splitlines()
    assert lines[0] == "| base detector | AP | +AugDETR | gain |"
    assert lines[2:] == ["| DINO | 49.0 | 50.2 | +1.2 |", "| AlignDETR | 50.3 | 51.4 | +1.1 |",
                         "| lost | n/a | n/a | n/a |"]
    with user_error(capsys, "--pairs needs an even number of runs"):
        collect_results.main(runs[:3] + ["--pairs"])


def test_main_table_script_checks_its_arguments():
    assert subprocess.run(["bash", "-n", SCRIPT]).returncode == 0
    usage = subprocess.run(["bash", SCRIPT], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr
    bad = subprocess.run(["bash", SCRIPT, "/nonexistent/coco", "8"], capture_output=True, text=True)
    assert bad.returncode == 2 and "COCO_PATH" in bad.stderr


@pytest.mark.parametrize("mode", ["synthetic", "coco"])
def test_main_table_script_runs_the_four_variants_with_their_configs(mode, tmp_path):
    # a stand-in `python` on PATH records each command line instead of training
    fake = tmp_path / "bin"
    fake.mkdir()
    record = tmp_path / "calls.txt"
    (fake / "python").write_text(f'#!/bin/sh\necho "$*" >> {record}\n')
    (fake / "python").chmod(0o755)
    coco = tmp_path / "coco"
    coco.mkdir()
    args = ["--synthetic", str(tmp_path / "out")] if mode == "synthetic" else [str(coco), "1", str(tmp_path / "out")]
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}")
    done = subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    calls = record.read_text().splitlines()
    assert len(calls) == 7
    config = "AlignDETR_synthetic.py" if mode == "synthetic" else "AlignDETR_4scale.py"
    ddq = "config/DDQ/DDQ_synthetic.py" if mode == "synthetic" else "config/DDQ/DDQ_4scale.py"
    for call, name, flags in [(calls[4], "ddq_detr", False), (calls[5], "ddq_detr_augdetr", True)]:
        assert f"-c {ddq} " in call + " " and f"--output_dir {tmp_path / 'out' / name} " in call + " "
        assert ("--use_hae --use_emca" in call) == flags
        # COCO runs: DDQ-DETR's embed_init_tgt=False after the DINO options' TRUE
        assert call.endswith("embed_init_tgt=False") == (mode == "coco")
    for call, name, flags, aligned in [(calls[0], "dino", False, False), (calls[1], "dino_augdetr", True, False),
                                       (calls[2], "aligndetr", False, True),
                                       (calls[3], "aligndetr_augdetr", True, True)]:
        assert call.startswith("main.py") and f"--output_dir {tmp_path / 'out' / name} " in call + " "
        assert ("--use_hae --use_emca" in call) == flags
        assert (f"-c config/AlignDETR/{config}" in call) == aligned
    assert calls[6].startswith("tools/collect_results.py") and calls[6].endswith(
        "--names DINO DINO+AugDETR AlignDETR AlignDETR+AugDETR DDQ-DETR DDQ-DETR+AugDETR --pairs")


def test_benchmark_criterion_prints_both_criteria(capsys):
    med = benchmark_criterion.run(["-c", os.path.join(ROOT, "config", "DINO", "DINO_synthetic.py"),
                                   "--gt", "2", "--repeats", "1"])
    assert set(med) == {"dino", "aligndetr"} and set(med["dino"]) == {"step", "match"}
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("CPU threads: ")]
    assert lines[0].startswith("criterion step (forward + backward), 100 queries, 7 classes, 3 decoder layers")
    assert lines[1] == "| criterion | step (ms) | matching (ms) |"
    assert lines[3].startswith("| dino | ") and lines[4].startswith("| aligndetr | ")
    assert lines[5].startswith("aligndetr/dino step ratio: ")
    with user_error(capsys, "must be >= 1"):
        benchmark_criterion.run(["--gt", "0"])
