"""What evaluation and training report (issue 26, items 5 and 6): metrics.json with named fields, the
per-class AP table, one AP scale (x100) wherever a person reads it, where each file went, and the summary
that ends a training run."""
import contextlib
import io
import json
import re

import pytest
import torch
from pycocotools.coco import COCO

import main
from datasets.coco_eval import METRIC_NAMES, CocoEvaluator

from tiny_configs import RUN, options

TINY = options(RUN, synthetic_num_train=4, synthetic_num_val=2, synthetic_image_size=96, val_batch_size=2)


def tiny_gt():
    """Two images; class 1 has a box in each, class 2 one box, class 3 none."""
    gt = COCO()
    gt.dataset = {"images": [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.png"} for i in (1, 2)],
                  "categories": [{"id": c, "name": n} for c, n in ((1, "cat"), (2, "dog"), (3, "eel"))],
                  "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600,
                                   "iscrowd": 0},
                                  {"id": 2, "image_id": 2, "category_id": 1, "bbox": [50, 50, 30, 30], "area": 900,
                                   "iscrowd": 0},
                                  {"id": 3, "image_id": 2, "category_id": 2, "bbox": [5, 5, 20, 20], "area": 400,
                                   "iscrowd": 0}]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_per_class_ap_and_named_stats_are_x100(backend):
    """Class 1 found exactly, class 2 missed (a box of class 1 there instead), class 3 has no ground truth."""
    ev = CocoEvaluator(tiny_gt(), backend=backend)
    xyxy = {1: [[10, 10, 50, 50]], 2: [[50, 50, 80, 80], [5, 5, 25, 25]]}
    ev.update({i: {"boxes": torch.tensor(b, dtype=torch.float), "scores": torch.tensor([0.9] * len(b)),
                   "labels": torch.tensor([1] * len(b))} for i, b in xyxy.items()})
    ev.accumulate()
    rows = {r["id"]: r for r in ev.per_class()}
    assert rows[1] == {"id": 1, "AP": 100.0, "AP50": 100.0, "instances": 2}
    assert rows[2] == {"id": 2, "AP": 0.0, "AP50": 0.0, "instances": 1}
    assert rows[3] == {"id": 3, "AP": None, "AP50": None, "instances": 0}
    named = ev.named_stats()
    assert list(named) == list(METRIC_NAMES) and named["AP"] == 50.0 == round(100 * ev.stats()[0], 2)
    assert named["APl"] is None  # no large object: COCO's -1 is 'nothing to measure'


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    syn = tmp_path_factory.mktemp("syn")
    main.main(main.build_args(["--output_dir", str(out), "--num_workers", "0", "--device", "cpu", "--options",
                               *TINY, "epochs=1", f"synthetic_dir={syn}"]))
    return out, syn


def test_training_writes_metrics_json_and_ends_with_a_summary(trained):
    out, _ = trained
    with open(out / "metrics.json") as f:
        metrics = json.load(f)
    with open(out / "log.txt") as f:
        raw = json.loads(f.readline())["test_coco_eval_bbox"]  # COCO's 0-1 array, DINO's log format
    assert metrics["AP"] == round(100 * raw[0], 2) and metrics["AR100"] == round(100 * raw[8], 2)
    assert (metrics["mode"], metrics["epoch"], metrics["images"], metrics["scale"]) == ("train", 0, 2, "AP x 100")
    assert metrics["checkpoint"] == str(out / "checkpoint.pth") and metrics["config"] == "config/DINO/DINO_synthetic.py"
    assert [c["name"] for c in metrics["per_class"]] == ["rectangle", "ellipse", "triangle", "cross", "ring",
                                                         "diamond"]
    info = (out / "info.txt").read_text()
    assert re.search(r"COCO bbox on 2 images \(x 100\): AP [\d.]+ {2}AP50 [\d.-]+ .* APl [\d.-]+\n", info)
    assert re.search(r"COCO bbox recall \(x 100\): AR1 [\d.]+ {2}AR10 [\d.-]+ .* ARl [\d.-]+\n", info)
    assert "epoch 0 done in " in info and f": AP {100 * raw[0]:.1f} (best {100 * raw[0]:.1f})" in info
    summary = info[info.index("training done in"):]
    assert f"best epoch 0: AP {100 * raw[0]:.1f}" in summary and "last evaluation (epoch 0, 2 images" in summary
    assert re.search(r"\n\[[^]]+\] +id +class +AP +AP50 +boxes\n\[[^]]+\] +1 +rectangle ", summary)
    assert re.search(r"checkpoints in .*: checkpoint.pth \(\d+ MB\), checkpoint0000.pth \(\d+ MB\), "
                     r"checkpoint_best_regular.pth \(\d+ MB\)", summary)


def test_eval_writes_metrics_json_and_says_where(trained, tmp_path, capsys):
    out, syn = trained
    ckpt = str(out / "checkpoint.pth")
    main.main(main.build_args(["--output_dir", str(tmp_path), "--num_workers", "0", "--device", "cpu", "--eval",
                               "--resume", ckpt, "--save_results", "--options", *TINY, f"synthetic_dir={syn}"]))
    with open(tmp_path / "metrics.json") as f:
        metrics = json.load(f)
    assert (metrics["mode"], metrics["checkpoint"], metrics["images"]) == ("eval", ckpt, 2) and "epoch" not in metrics
    printed = capsys.readouterr().out
    assert f"wrote {tmp_path / 'metrics.json'}, {tmp_path / 'log.txt'}, {tmp_path / 'results.json'}" in printed
    assert re.search(r"\] +id +class +AP +AP50 +boxes\n", printed)  # 6 classes: shown by default
    main.main(main.build_args(["--output_dir", str(tmp_path), "--num_workers", "0", "--device", "cpu", "--eval",
                               "--resume", ckpt, "--no_per_class", "--options", *TINY, f"synthetic_dir={syn}"]))
    assert "AP50  boxes" not in capsys.readouterr().out


def test_checkpoints_store_class_names_and_the_tools_use_them(trained, tmp_path, capsys):
    from tools import inference
    from util.checkpoint import load_checkpoint
    out, syn = trained
    names = load_checkpoint(str(out / "checkpoint.pth"))["args"]["class_names"]
    assert names == {1: "rectangle", 2: "ellipse", 3: "triangle", 4: "cross", 5: "ring", 6: "diamond"}
    dets = inference.main(["--checkpoint", str(out / "checkpoint.pth"), "--input", str(syn / "val2017"),
                           "--output", str(tmp_path), "--threshold", "0"])
    named = [d for d in dets if d["category_id"] in names]
    assert named and all(d["category_name"] == names[d["category_id"]] for d in named)
    assert "class names: the checkpoint (its training data's categories)" in capsys.readouterr().out
