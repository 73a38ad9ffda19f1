"""Atomic save, safe load and mismatch errors (util/checkpoint.py)."""
import argparse
import os
import pickle

import pytest
import torch
from torch import nn

from util.checkpoint import (TMP_PREFIX, CheckpointError, UnsafeCheckpointError, find_resume_checkpoint,
                             load_checkpoint, load_model_state, save_checkpoint)


def test_save_and_load_roundtrip(tmp_path):
    path = str(tmp_path / "checkpoint.pth")
    save_checkpoint({"model": {"w": torch.ones(2)}, "epoch": 3, "args": {"lr": 0.1}}, path)
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 3 and torch.equal(ckpt["model"]["w"], torch.ones(2))
    assert [n for n in os.listdir(tmp_path) if n.startswith(TMP_PREFIX)] == []


def test_crash_during_save_keeps_previous_file(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pth")
    save_checkpoint({"model": {"w": torch.zeros(1)}, "epoch": 0}, path)

    def dying_save(obj, f):
        f.write(b"partial garbage")
        raise KeyboardInterrupt  # simulated kill in the middle of the write

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"model": {"w": torch.ones(1)}, "epoch": 1}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 0
    # a stale temp file left by a hard kill is never picked up as a checkpoint
    (tmp_path / f"{TMP_PREFIX}abc.pth").write_bytes(b"junk")
    assert find_resume_checkpoint(str(tmp_path)) == path


def test_namespace_pickled_args_load_safely(tmp_path):
    path = str(tmp_path / "dino_official.pth")
    torch.save({"model": {"w": torch.ones(1)}, "args": argparse.Namespace(lr=1e-4, epochs=12), "epoch": 11}, path)
    ckpt = load_checkpoint(path)
    assert ckpt["args"] == {"lr": 1e-4, "epochs": 12}


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_pickle_refused(tmp_path):
    path = str(tmp_path / "evil.pth")
    torch.save({"model": {"w": torch.ones(1)}, "payload": Evil()}, path)
    with pytest.raises(pickle.UnpicklingError) as err:
        load_checkpoint(path)
    assert isinstance(err.value, UnsafeCheckpointError) and "evil.pth" in str(err.value)


def test_truncated_and_non_checkpoint_files(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.randn(100)}}, str(good))
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    for path in (truncated, text):
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(str(path))
        assert path.name in str(err.value) and "\n" not in str(err.value)


def test_mismatch_lists_keys_and_shapes():
    src = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 5))
    dst = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 6))
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"2 shape mismatches: 1\.weight \(5, 4\) vs model \(6, 4\)"):
        load_model_state(dst, state, source="ckpt.pth")
    # finetune: drop the head by substring, non-strict load of the rest
    result = load_model_state(dst, state, strict=False, ignore=["1."])
    assert result.missing_keys == ["1.weight", "1.bias"]
    assert torch.equal(dst[0].weight, src[0].weight)


def test_auto_resume_prefers_checkpoint_then_newest_numbered(tmp_path):
    assert find_resume_checkpoint(str(tmp_path)) is None
    for epoch in (0, 1):
        save_checkpoint({"model": {}, "epoch": epoch}, str(tmp_path / f"checkpoint{epoch:04}.pth"))
    assert find_resume_checkpoint(str(tmp_path)).endswith("checkpoint0001.pth")
    (tmp_path / "checkpoint0001.pth").write_bytes(b"broken")
    assert find_resume_checkpoint(str(tmp_path)).endswith("checkpoint0000.pth")
    save_checkpoint({"model": {}, "epoch": 1}, str(tmp_path / "checkpoint.pth"))
    assert find_resume_checkpoint(str(tmp_path)).endswith("checkpoint.pth")
