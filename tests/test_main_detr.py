"""DETR through main.py: official checkpoint files load strictly (--resume, --pretrain_model_path) and one that
does not fit is one line; fine-tuning to another class count with --finetune_ignore class_embed; the synthetic
config trains, resumes and evaluates. (tools/convert_checkpoint.py on the official file:
tests/tools/test_convert_checkpoint.py; DETR's configs and refused keys: tests/models/test_detr.py.)

The official file is made from the official key list (tests/data/detr_reference/keys_r50.tsv) alone, with the
fixture's rule values, and stored as DETR's main.py stores its checkpoints ({'model', 'args' Namespace}).
"""
import json
import os

import pytest
import torch

import main
from util.checkpoint import load_checkpoint

from detr_reference import write_official_r50
from tiny_configs import DETR_RUN, options

R50 = "config/DETR/detr_r50.py"
# DETR R50 evaluated on a few small synthetic images (the model's sizes stay the config's)
SMALL_DATA = ["dataset_file=synthetic", "synthetic_num_train=2", "synthetic_num_val=2", "synthetic_image_size=96",
              "data_aug_scales=[64]", "data_aug_max_size=96", "data_aug_scales2_resize=[64]",
              "data_aug_scales2_crop=[48,64]", "backbone_weights=None", "batch_size=2", "val_batch_size=2"]


@pytest.fixture(scope="module")
def official_r50(tmp_path_factory):
    """(path, state) of an official-layout DETR R50 file (tests/detr_reference.py)."""
    path = str(tmp_path_factory.mktemp("official") / "detr-r50-e632da11.pth")
    return path, write_official_r50(path)


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    from datasets.synthetic import ensure_synthetic_dataset
    return ensure_synthetic_dataset(str(tmp_path_factory.mktemp("syn")), 2, 2, 96, 0)


def cli(argv, capsys):
    code = main.cli(argv)
    return code, capsys.readouterr().err.strip()


def one_line_error(code, err):
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("main.py: error: "), err
    return lines[0]


def run_argv(out, syn, *extra, options_=()):
    return ["-c", R50, "--output_dir", str(out), "--device", "cpu", "--num_workers", "0", *extra,
            "--options", *SMALL_DATA, f"synthetic_dir={syn}", *options_]


def test_official_file_evaluates_with_resume(tmp_path, official_r50, syn, capsys):
    path, _ = official_r50
    assert main.cli(run_argv(tmp_path / "out", syn, "--eval", "--resume", path)) == 0
    with open(tmp_path / "out" / "log.txt") as f:
        record = json.loads(f.readlines()[-1])
    assert record["mode"] == "eval" and record["checkpoint"] == path and len(record["test_coco_eval_bbox"]) == 12
    assert record["val_batch_size"] == 2  # as DETR R50 was trained (its stored batch_size): no padding warning
    assert record["n_parameters"] == 41_302_368  # DETR R50's trainable parameters (stem and layer1 frozen)


def test_official_file_fine_tunes_to_another_class_count(tmp_path, official_r50, syn, capsys):
    """--pretrain_model_path with --finetune_ignore class_embed: every other official tensor is loaded (the
    frozen stem keeps it exactly), the class head has the new count; without the flag, one line names it."""
    path, state = official_r50
    argv = run_argv(tmp_path / "out", syn, "--pretrain_model_path", path, "--finetune_ignore", "class_embed",
                    options_=["num_classes=7", "epochs=1"])
    assert main.cli(argv) == 0
    trained = load_checkpoint(str(tmp_path / "out" / "checkpoint.pth"))["model"]
    assert trained["class_embed.weight"].shape == (8, 256)
    assert torch.equal(trained["backbone.0.body.conv1.weight"], state["backbone.0.body.conv1.weight"])
    assert torch.equal(trained["backbone.0.body.bn1.running_var"], state["backbone.0.body.bn1.running_var"])
    argv = run_argv(tmp_path / "out2", syn, "--pretrain_model_path", path, options_=["num_classes=7", "epochs=1"])
    line = one_line_error(*cli(argv, capsys))
    assert "does not fit this model" in line and "--finetune_ignore" in line


def test_file_that_does_not_fit_is_one_line(tmp_path, official_r50, syn, capsys):
    """The stored official args name the key that differs; a DETR file in DINO's model is refused too."""
    path, _ = official_r50
    line = one_line_error(*cli(run_argv(tmp_path / "a", syn, "--eval", "--resume", path,
                                        options_=["num_queries=50"]), capsys))
    assert "num_queries=100 (now 50)" in line and "1 tensors differ" in line
    line = one_line_error(*cli(["-c", "config/DINO/DINO_synthetic.py", "--output_dir", str(tmp_path / "b"),
                                "--device", "cpu", "--eval", "--resume", path, "--options",
                                f"synthetic_dir={syn}", "synthetic_num_val=2"], capsys))
    assert "does not fit this model" in line


def test_synthetic_config_trains_resumes_and_evaluates(tmp_path, syn):
    base = ["-c", "config/DETR/detr_synthetic.py", "--output_dir", str(tmp_path / "run"), "--device", "cpu",
            "--num_workers", "0", "--options", *options(DETR_RUN, synthetic_num_train=2, synthetic_num_val=2,
                                                        synthetic_image_size=96, batch_size=2), f"synthetic_dir={syn}"]
    assert main.cli(base + ["epochs=1"]) == 0
    assert main.cli(base + ["epochs=2"]) == 0  # auto-resumes epoch 1 from output_dir
    with open(tmp_path / "run" / "log.txt") as f:
        records = [json.loads(line) for line in f]
    assert [r["epoch"] for r in records] == [0, 1]
    assert {"train_loss_ce", "train_cardinality_error_unscaled", "test_coco_eval_bbox"} <= set(records[-1])
    assert os.path.isfile(tmp_path / "run" / "predictions.png")


def test_eval_warns_when_batching_more_images_than_trained():
    """Padding the model never saw changes DETR's AP: --eval with more images per batch than the stored
    training batch size says so; DINO's usual evaluation (1 image, trained with 2) and files without stored
    args stay quiet."""
    from argparse import Namespace

    from engine.run import warn_unseen_padding
    line = warn_unseen_padding(Namespace(val_batch_size=2), {"batch_size": 1}, "detr-r50-dc5.pth")
    assert "trained with 1 image(s) per process" in line and "--options val_batch_size=1" in line
    assert warn_unseen_padding(Namespace(val_batch_size=1), {"batch_size": 2}, "dino.pth") is None
    assert warn_unseen_padding(Namespace(val_batch_size=2), {"batch_size": 2}, "detr-r50.pth") is None
    assert warn_unseen_padding(Namespace(val_batch_size=4), None, "state_dict_only.pth") is None
