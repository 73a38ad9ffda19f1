"""scripts/table1.sh (AugDETR's Table 1 in one command) and tools/collect_results.py --table1, run on the
synthetic data with tiny checkpoints of the synthetic configs, as the script's --synthetic mode is meant for."""
import os
import subprocess
import sys

from models import build_model
from tools.common import tool_args
from util.checkpoint import save_checkpoint

from tiny_configs import DETR_RUN, options

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import collect_results  # noqa: E402

# sizes both DETR and DINO take (DETR refuses DINO's denoising keys)
TINY = options(DETR_RUN, synthetic_num_train=2, synthetic_num_val=2, synthetic_image_size=96)


def script(*args, env=None):
    return subprocess.run(["bash", os.path.join(ROOT, "scripts", "table1.sh"), *args], capture_output=True,
                          text=True, cwd=ROOT, env=env)


def test_usage_and_bad_folders(tmp_path):
    assert script().returncode == 2 and script().stderr.startswith("usage:")
    proc = script(str(tmp_path / "no_coco"), str(tmp_path))
    assert proc.returncode == 2 and "COCO_PATH" in proc.stderr
    proc = script("--synthetic", str(tmp_path / "no_weights"))
    assert proc.returncode == 2 and "WEIGHTS_DIR" in proc.stderr


def test_synthetic_table1_evaluates_what_is_there(tmp_path):
    """DETR and DINO files present: their rows have numbers (DETR's beside the paper's 42.0 / 20.5 / 45.8 /
    61.1); Deformable DETR (config or file absent) and AugDETR (no file) print n/a and say why."""
    weights = tmp_path / "weights"
    for name, config in [("detr_synthetic.pth", "config/DETR/detr_synthetic.py"),
                         ("dino_synthetic.pth", "config/DINO/DINO_synthetic.py")]:
        model = build_model(tool_args(config, TINY))[0]
        save_checkpoint({"model": model.state_dict()}, str(weights / name))
    env = dict(os.environ, MSDA_BACKEND="pytorch")
    proc = script("--synthetic", str(weights), str(tmp_path / "out"), "--device", "cpu", "--num_workers", "0",
                  "--options", *TINY, f"synthetic_dir={tmp_path / 'syn'}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line}
    # numbers ('-': no objects of that size); DETR synthetic evaluates 1 image per batch
    assert rows["DETR"][0] == "1" and all(v == "-" or 0 <= float(v) <= 100 for v in rows["DETR"][1:5])
    assert rows["DETR"][5:] == ["500", "42.0", "20.5", "45.8", "61.1"]
    assert rows["Deformable DETR"][1:5] == ["n/a"] * 4 and rows["Deformable DETR"][5:] == ["50", "44.5", "27.1",
                                                                                          "47.6", "59.6"]
    assert all(v == "-" or 0 <= float(v) <= 100 for v in rows["DINO"][1:5]) and rows["AugDETR"][1:5] == ["n/a"] * 4
    assert "== AugDETR: skipped (no " in proc.stdout and "== Deformable DETR: skipped" in proc.stdout


def test_table1_reads_eval_lines_only(tmp_path):
    """A training epoch's line is not an --eval result: such a run is n/a in Table 1."""
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "log.txt").write_text('{"epoch": 0, "test_coco_eval_bbox": [0.5, 0, 0, 0.1, 0.2, 0.3]}\n')
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "log.txt").write_text(
        '{"mode": "eval", "val_batch_size": 2, "test_coco_eval_bbox": [0.5, 0, 0, 0.1, 0.2, -1]}\n')
    lines = collect_results.table1([str(tmp_path / "train"), str(tmp_path / "eval")], ["DETR", "mine"]).splitlines()
    assert lines[2].startswith("| DETR | - | n/a | n/a | n/a | n/a | 500 | 42.0")
    assert lines[3] == "| mine | 2 | 50.0 | 10.0 | 20.0 | - | - | - | - | - | - |"  # -1: no large objects


def test_table1_cli(tmp_path, capsys):
    assert collect_results.main([str(tmp_path), "--names", "DETR", "--table1"]) == 0
    assert "| DETR | - | n/a" in capsys.readouterr().out
