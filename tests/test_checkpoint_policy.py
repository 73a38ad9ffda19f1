"""Which checkpoint files a run writes and keeps (engine/checkpoint_policy.py; issue 26, item 8)."""
import argparse
import json
import os

import pytest
import torch

import main
from engine.checkpoint_policy import CheckpointPolicy, best_epoch
from util.checkpoint import load_checkpoint

from tiny_configs import RUN, options

# the tiny run with the synthetic demo config's policy (no numbered files, best as weights only, the last
# checkpoint.pth without optimizer state) on 4 + 2 synthetic images
DEMO = options(RUN, keep_checkpoints=0, best_checkpoint="weights", final_checkpoint_optimizer=False,
               synthetic_num_train=4, synthetic_num_val=2, synthetic_image_size=96, val_batch_size=2)
CKPT = {"model": {"w": torch.ones(2)}, "optimizer": {"state": {}}, "lr_scheduler": {}, "scaler": None,
        "ema_model": {"w": torch.zeros(2)}, "epoch": 4, "args": {"lr": 1.0}}


def policy(**kw):
    args = dict(debug=False, keep_checkpoints=None, best_checkpoint="weights", final_checkpoint_optimizer=True)
    return CheckpointPolicy.of(argparse.Namespace(**dict(args, **kw)))


def test_files_per_epoch_follow_dino_unless_keep_is_0():
    assert policy().epoch_files(10, lr_drop=11, interval=100) == ["checkpoint.pth", "checkpoint0010.pth"]
    assert policy().epoch_files(3, lr_drop=11, interval=100) == ["checkpoint.pth"]
    assert policy(keep_checkpoints=0).epoch_files(10, lr_drop=11, interval=1) == ["checkpoint.pth"]


def test_the_last_file_drops_the_training_state_when_asked():
    assert policy().content(CKPT, final=True) is CKPT
    small = policy(final_checkpoint_optimizer=False)
    assert small.content(CKPT, final=False) is CKPT
    assert set(small.content(CKPT, final=True)) == {"model", "ema_model", "epoch", "args"}


def test_best_file_content():
    assert set(policy().best_content(CKPT, is_last=False)) == {"model", "epoch", "args"}
    assert policy().best_content(CKPT, is_last=True) is None  # checkpoint.pth holds these weights
    full = policy(best_checkpoint="full").best_content(CKPT, is_last=True)
    assert set(full) == set(CKPT) - {"ema_model"}
    assert policy(best_checkpoint="none").best_content(CKPT, is_last=False) is None
    assert CheckpointPolicy.of(argparse.Namespace(debug=True)) == CheckpointPolicy(0, "none", False)


def test_prune_keeps_the_newest(tmp_path):
    for epoch in (1, 3, 10, 11):
        (tmp_path / f"checkpoint{epoch:04}.pth").write_bytes(b"x")
    (tmp_path / "checkpoint.pth").write_bytes(b"x")
    assert policy(keep_checkpoints=2).prune(str(tmp_path)) == [str(tmp_path / "checkpoint0001.pth"),
                                                               str(tmp_path / "checkpoint0003.pth")]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pth", "checkpoint0010.pth", "checkpoint0011.pth"]
    assert policy().prune(str(tmp_path)) == []
    assert best_epoch([{"epoch": 0, "test_coco_eval_bbox": [0.2]}, {"epoch": 1, "test_coco_eval_bbox": [0.1]},
                       {"mode": "eval", "test_coco_eval_bbox": [0.9]}]) == 0


def run_demo(out, syn, *extra, epochs):
    return main.main(main.build_args(["--output_dir", str(out), "--num_workers", "0", "--device", "cpu", *extra,
                                      "--options", *DEMO, f"epochs={epochs}", f"synthetic_dir={syn}"]))


def log_records(out):
    with open(out / "log.txt") as f:
        return [json.loads(line) for line in f]


def test_demo_policy_run_then_train_on(tmp_path):
    """2 epochs: checkpoint.pth without optimizer state, no numbered file, the best file only when the best
    epoch is not the last; training on to 3 epochs restarts the optimizer with the lr the schedule gives."""
    out = tmp_path / "run"
    run_demo(out, tmp_path / "syn", epochs=2)
    last = load_checkpoint(str(out / "checkpoint.pth"))
    assert last["epoch"] == 1 and "optimizer" not in last and "model" in last
    names = {n for n in os.listdir(out) if n.endswith(".pth")}
    best = best_epoch(log_records(out))
    assert names == ({"checkpoint.pth"} if best == 1 else {"checkpoint.pth", "checkpoint_best_regular.pth"})
    if best == 0:
        assert set(load_checkpoint(str(out / "checkpoint_best_regular.pth"))) == {"model", "epoch", "args"}
    run_demo(out, tmp_path / "syn", epochs=3)
    info = (out / "info.txt").read_text()
    assert "has no optimizer state" in info and "starts the optimizer's moments anew" in info
    assert [r["epoch"] for r in log_records(out)] == [0, 1, 2]
    assert log_records(out)[-1]["train_lr"] == pytest.approx(2.5e-4)  # lr_drop 12: no drop yet
    if best == 1:  # epoch 1's weights were saved as the best file before epoch 2 overwrote checkpoint.pth
        assert "wrote " in info and "epoch 1, the best so far" in info


def test_debug_run_writes_small_outputs(tmp_path):
    out = tmp_path / "dbg"
    run_demo(out, tmp_path / "syn", "--debug", "--options", "best_checkpoint=full", "keep_checkpoints=none",
             "final_checkpoint_optimizer=True", epochs=1)
    assert sorted(n for n in os.listdir(out) if n.endswith(".pth")) == ["checkpoint.pth"]
    assert "optimizer" not in load_checkpoint(str(out / "checkpoint.pth"))


def test_training_on_keeps_the_best_epoch_that_was_the_last(tmp_path):
    """A finished run whose best epoch was its last has no best file; before training on overwrites its
    checkpoint.pth, the loaded weights become checkpoint_best_regular.pth."""
    from types import SimpleNamespace

    from engine.training import _restore_best_file
    args = argparse.Namespace(output_dir=str(tmp_path), start_epoch=2, debug=False, keep_checkpoints=0,
                              best_checkpoint="weights", final_checkpoint_optimizer=False)
    run = SimpleNamespace(main_proc=True, resumed_from="x.pth", args=args, model_without_ddp=torch.nn.Linear(2, 1))
    records = [{"epoch": 0, "test_coco_eval_bbox": [0.1]}, {"epoch": 1, "test_coco_eval_bbox": [0.3]}]
    _restore_best_file(run, records[:1])  # the best epoch (0) is not the last one: it has its own file already
    assert not (tmp_path / "checkpoint_best_regular.pth").exists()
    _restore_best_file(run, records)
    best = load_checkpoint(str(tmp_path / "checkpoint_best_regular.pth"))
    assert best["epoch"] == 1 and torch.equal(best["model"]["weight"], run.model_without_ddp.weight.detach())
