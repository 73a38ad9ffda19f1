"""Atomic save, safe load, integrity digests and mismatch errors (util/checkpoint.py)."""
import argparse
import logging
import os
import pickle
import subprocess
import sys

import pytest
import torch
from torch import nn

from util.checkpoint import (
    INTEGRITY_KEY,
    TMP_PREFIX,
    CheckpointError,
    UnsafeCheckpointError,
    find_resume_checkpoint,
    load_checkpoint,
    load_model_state,
    load_resume_checkpoint,
    main,
    save_checkpoint,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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


# ---- integrity digests ----

class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def detr_log():
    """Records of the 'detr' logger (own handler: main's logging setup may stop propagation to root)."""
    log, handler = logging.getLogger("detr"), Records()
    old_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield handler
    log.removeHandler(handler)
    log.setLevel(old_level)


def trained_checkpoint():
    """A model + AdamW state after one step, laid out like main.py's checkpoints."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(3, 8)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 4,
            "args": {"coco_path": "/data/coco2017", "lr": 1e-3}}


def flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0xFF]))


def overwrite_byte(path, offset, new: bytes):
    """Replace one byte by `new` (for text inside data.pkl: a flipped byte there is usually invalid UTF-8,
    which torch.load already rejects; a plausible wrong character is what only the digest catches)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(new)


def offset_of(path, data: bytes) -> int:
    """Offset of the middle of `data` in the file. Tensor records (data/N) and data.pkl are stored
    uncompressed in torch's zip, so a tensor's bytes appear verbatim; they must occur exactly once."""
    raw = open(path, "rb").read()
    assert raw.count(data) == 1, "test data must be unique in the file"
    return raw.find(data) + len(data) // 2


def test_saved_checkpoint_records_digests_and_loads_verified(tmp_path, detr_log):
    path = str(tmp_path / "checkpoint.pth")
    ckpt = trained_checkpoint()
    save_checkpoint(ckpt, path)
    assert INTEGRITY_KEY not in ckpt  # the caller's dict is not modified
    record = torch.load(path, weights_only=True)[INTEGRITY_KEY]
    assert record["algo"] == "sha256" and "optimizer/state/0/exp_avg" in record["tensors"]
    assert "model/0.weight" in record["tensors"] and set(record["entries"]) == {"optimizer", "epoch", "args"}
    loaded = load_checkpoint(path)
    assert INTEGRITY_KEY not in loaded and loaded["epoch"] == 4
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], ckpt["optimizer"]["state"][0]["exp_avg"])
    assert not [r for r in detr_log.records if "verif" in r.getMessage()]


def tensor_at(ckpt, path):
    """ckpt['optimizer']['state'][0]['exp_avg'] for 'optimizer/state/0/exp_avg' (int keys as digits)."""
    for key in path.split("/"):
        ckpt = ckpt[int(key) if key.isdigit() else key]
    return ckpt


@pytest.mark.parametrize("tensor_path", ["model/1.weight", "optimizer/state/0/exp_avg"])
def test_flipped_byte_in_tensor_data_names_the_tensor(tmp_path, tensor_path):
    path = str(tmp_path / "checkpoint.pth")
    ckpt = trained_checkpoint()
    save_checkpoint(ckpt, path)
    tensor = tensor_at(ckpt, tensor_path)
    flip_byte(path, offset_of(path, tensor.numpy().tobytes()))
    # torch.load itself does not notice: the corrupted value loads silently
    assert not torch.equal(tensor_at(torch.load(path, weights_only=True), tensor_path), tensor)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: integrity check failed: tensor '{tensor_path}' differs") and "\n" not in msg


def test_flipped_byte_in_digest_is_detected(tmp_path):
    path = str(tmp_path / "checkpoint.pth")
    save_checkpoint(trained_checkpoint(), path)
    digest = torch.load(path, weights_only=True)[INTEGRITY_KEY]["tensors"]["model/0.bias"]
    offset = offset_of(path, digest.encode())
    overwrite_byte(path, offset, b"0" if digest[len(digest) // 2] != "0" else b"1")  # another hex digit
    with pytest.raises(CheckpointError, match=r"tensor 'model/0\.bias' differs from its recorded SHA-256"):
        load_checkpoint(path)


def test_changed_non_tensor_entry_is_detected(tmp_path):
    path = str(tmp_path / "checkpoint.pth")
    save_checkpoint(trained_checkpoint(), path)
    overwrite_byte(path, offset_of(path, b"/data/coco2017"), b"X")
    with pytest.raises(CheckpointError, match=r"non-tensor values under 'args' differ"):
        load_checkpoint(path)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated_then_zero_padded_file_is_detected(tmp_path, keep):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint(trained_checkpoint(), str(path))
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))
        f.truncate(size)  # extends with zero bytes, like a copy that stopped early into a preallocated file
    assert path.stat().st_size == size
    with pytest.raises(CheckpointError, match="checkpoint.pth: not a readable checkpoint"):
        load_checkpoint(str(path))


def test_auto_resume_skips_corrupted_newest_and_takes_previous(tmp_path, detr_log):
    for epoch in (0, 1):
        ckpt = {**trained_checkpoint(), "epoch": epoch}
        save_checkpoint(ckpt, str(tmp_path / f"checkpoint{epoch:04}.pth"))
    newest = str(tmp_path / "checkpoint.pth")
    save_checkpoint(ckpt, newest)
    flip_byte(newest, offset_of(newest, ckpt["model"]["1.weight"].numpy().tobytes()))
    assert find_resume_checkpoint(str(tmp_path)).endswith("checkpoint0001.pth")
    flip_byte(str(tmp_path / "checkpoint0001.pth"),
              offset_of(str(tmp_path / "checkpoint0001.pth"), ckpt["model"]["0.weight"].numpy().tobytes()))
    assert find_resume_checkpoint(str(tmp_path)).endswith("checkpoint0000.pth")
    warnings = [r.getMessage() for r in detr_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3 and all("auto-resume: skipping" in w and "integrity check failed" in w
                                      for w in warnings)
    # the loading variant picks the same file and returns its verified content
    path, loaded = load_resume_checkpoint(str(tmp_path))
    assert path.endswith("checkpoint0000.pth") and loaded["epoch"] == 0
    assert torch.equal(loaded["model"]["0.weight"], ckpt["model"]["0.weight"])
    # an explicit load of the corrupted file stops with the one-line error
    with pytest.raises(CheckpointError, match=r"checkpoint\.pth: integrity check failed: tensor 'model/1\.weight'"):
        load_checkpoint(newest)


def test_official_layout_without_digest_loads_with_one_info_line(tmp_path, detr_log):
    path = str(tmp_path / "checkpoint0011.pth")
    torch.save({"model": {"w": torch.ones(3)}, "args": argparse.Namespace(lr=1e-4), "epoch": 11}, path)
    assert find_resume_checkpoint(str(tmp_path)) == path  # choosing it logs nothing about verification
    ckpt = load_checkpoint(path)
    assert torch.equal(ckpt["model"]["w"], torch.ones(3)) and ckpt["args"] == {"lr": 1e-4}
    lines = [r for r in detr_log.records if "verification" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert lines[0].getMessage().startswith(f"{path}: no integrity digest")


def test_verify_command_one_line_per_file_and_exit_status(tmp_path, capsys):
    good, bad, official = (str(tmp_path / n) for n in ("good.pth", "bad.pth", "official.pth"))
    ckpt = trained_checkpoint()
    save_checkpoint(ckpt, good)
    save_checkpoint(ckpt, bad)
    flip_byte(bad, offset_of(bad, ckpt["model"]["0.weight"].numpy().tobytes()))
    torch.save({"model": {"w": torch.ones(1)}}, official)
    assert main(["verify", good, official]) == 0
    assert main(["verify", "--require-digest", official]) == 1
    assert main(["verify", good, bad, str(tmp_path / "missing.pth")]) == 1
    lines = capsys.readouterr().out.splitlines()
    n = len(ckpt["model"]) + sum(len(s) for s in ckpt["optimizer"]["state"].values())  # + step, exp_avg(_sq)
    assert lines[0] == f"ok {good}: {n} tensors match their SHA-256, epoch 4"
    assert lines[1].startswith(f"not verified {official}: readable, but it has no integrity digest")
    assert lines[2].startswith(f"FAILED {official}:")
    assert lines[3].startswith("ok ") and lines[4].startswith(f"FAILED {bad}: integrity check failed: tensor "
                                                              "'model/0.weight'")
    assert lines[5] == f"FAILED {tmp_path / 'missing.pth'}: checkpoint file not found" and len(lines) == 6


def test_verify_runs_as_module(tmp_path):
    path = str(tmp_path / "checkpoint.pth")
    save_checkpoint(trained_checkpoint(), path)
    overwrite_byte(path, offset_of(path, b"/data/coco2017"), b"X")
    proc = subprocess.run([sys.executable, "-m", "util.checkpoint", "verify", path], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stdout == (
        f"FAILED {path}: integrity check failed: the non-tensor values under 'args' differ from their "
        "recorded SHA-256; the file changed after it was saved (bad disk, partial or faulty copy); "
        "use another copy or an older checkpoint\n"), proc.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_state_saves_and_verifies(tmp_path):
    path = str(tmp_path / "checkpoint.pth")
    model = nn.Linear(4, 3).cuda()
    save_checkpoint({"model": model.state_dict(), "epoch": 0}, path)  # digests hash a host copy
    assert torch.equal(load_checkpoint(path)["model"]["weight"], model.weight.detach().cpu())
