"""`python main.py` turns known user errors into one line `main.py: error: ...` and exit status 2."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import main

from reliability_helpers import ROOT, make_synthetic, read_log, tiny_argv


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return make_synthetic(str(tmp_path_factory.mktemp("syn")))


def run_cli(argv, capsys):
    code = main.cli(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("main.py: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_config_errors_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("lr = (0.1\n")
    assert_one_line_error(*run_cli(["-c", str(bad)], capsys), "bad.py:1", "syntax error")
    nobase = tmp_path / "child.py"
    nobase.write_text("_base_ = ['gone.py']\nlr = 0.1\n")
    assert_one_line_error(*run_cli(["-c", str(nobase)], capsys), "'gone.py' not found")
    assert_one_line_error(*run_cli(["--options", "lr_drop=abc"], capsys), "lr_drop='abc'", "must be an int >= 1")
    assert_one_line_error(*run_cli(["--options", "hiden_dim=3"], capsys), "did you mean 'hidden_dim'")


def test_missing_coco_path_exits_2_before_training(tmp_path, capsys):
    code, err = run_cli(tiny_argv(tmp_path / "out", "unused", "--dataset_file", "coco",
                                  "--coco_path", str(tmp_path / "nowhere")), capsys)
    assert_one_line_error(code, err, "nowhere", "is not a directory")
    assert not (tmp_path / "out" / "checkpoint.pth").exists()


def test_bad_image_in_dataloader_worker_is_one_line(tmp_path, syn, capsys):
    """Worker exceptions carry the worker traceback in their message; only its last line is shown."""
    root = tmp_path / "coco"
    shutil.copytree(syn, root)
    first = sorted(os.listdir(root / "train2017"))[0]
    (root / "train2017" / first).write_bytes(b"not an image")
    argv = tiny_argv(tmp_path / "out", syn, "--dataset_file", "coco", "--coco_path", str(root))
    argv[argv.index("--num_workers") + 1] = "1"
    code, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, first, "skip_bad_images=True")
    assert "Traceback" not in err


def test_skipped_images_and_dropped_boxes_counted_in_log(tmp_path, syn):
    root = tmp_path / "coco"
    shutil.copytree(syn, root)
    first = sorted(os.listdir(root / "train2017"))[0]
    (root / "train2017" / first).write_bytes(b"\xff\xd8\xff truncated jpeg")
    ann_path = root / "annotations" / "instances_train2017.json"
    data = json.loads(ann_path.read_text())
    img = data["images"][0]
    data["annotations"].append({"image_id": img["id"], "category_id": 1, "bbox": [img["width"] + 5, 0, 4, 4]})
    data["annotations"].append({"image_id": img["id"], "category_id": 1, "bbox": [1, 1, 0, 3]})
    ann_path.write_text(json.dumps(data))
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match=first):
        main.main(main.build_args(tiny_argv(out, syn, "--dataset_file", "coco", "--coco_path", str(root),
                                            options=["skip_bad_images=True"])))
    entry = read_log(out)[-1]
    assert entry["train_skipped_images"] == 1 and entry["train_dropped_boxes"] == 2
    assert entry["test_skipped_images"] == 0 and entry["test_dropped_boxes"] == 0
    assert "train_dropped_boxes=2" in (out / "info.txt").read_text()


def test_truncated_pretrain_and_non_checkpoint_resume(tmp_path, syn, capsys):
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    code, err = run_cli(tiny_argv(tmp_path / "a", syn, "--pretrain_model_path", str(junk)), capsys)
    assert_one_line_error(code, err, "junk.pth", "not a readable checkpoint")
    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.randn(64)}}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:200])
    code, err = run_cli(tiny_argv(tmp_path / "b", syn, "--resume", str(cut)), capsys)
    assert_one_line_error(code, err, "cut.pth")


def test_malicious_checkpoint_via_real_cli_is_refused_and_not_executed(tmp_path, syn):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    payload = (f"import os, torch\n"
               f"class Evil:\n"
               f"    def __reduce__(self):\n"
               f"        return (os.system, ('touch {marker}',))\n"
               f"torch.save({{'model': {{}}, 'args': Evil()}}, {str(evil)!r})\n")
    subprocess.run([sys.executable, "-c", payload], check=True)
    proc = subprocess.run([sys.executable, "main.py", *tiny_argv(tmp_path / "out", syn, "--eval", "--resume",
                                                                 str(evil))],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("main.py: error: ") and "refused to load" in lines[0]
    assert not marker.exists()
