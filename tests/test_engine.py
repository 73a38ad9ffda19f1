"""train_one_epoch with a tiny fake model/criterion, total_loss and the results writer (engine.py)."""
import io
import json

import numpy as np
import pytest
import torch
from torch import nn

from engine import DEBUG_ITERATIONS, NonFiniteLossError, total_loss, train_one_epoch, write_coco_results
from util.logger import setup_logger
from util.misc import NestedTensor


class FakeModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, samples, targets=None):
        # the AMP state the forward ran under (None: autocast off)
        self.autocast_dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        return {"pred": samples.tensors.mean() * self.w}


class FakeCriterion(nn.Module):
    """loss_a = pred^2 (weight 2), loss_b = pred (weight 0.5), 'log_only' has no weight."""

    def __init__(self, nan_at=()):
        super().__init__()
        self.weight_dict = {"loss_a": 2.0, "loss_b": 0.5}
        self.nan_at, self.calls = set(nan_at), 0

    def forward(self, outputs, targets):
        p = outputs["pred"]
        bad = self.calls in self.nan_at
        self.calls += 1
        return {"loss_a": p * p * (float("nan") if bad else 1.0), "loss_b": p, "log_only": p.detach() * 0}


def loader(n):
    return [(NestedTensor(torch.full((1, 1, 2, 2), 1.0), torch.zeros(1, 2, 2, dtype=torch.bool)),
             ({"labels": torch.tensor([1])},)) for _ in range(n)]


def run(n=3, **kw):
    model = FakeModel()
    crit = FakeCriterion(kw.pop("nan_at", ()))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = train_one_epoch(model, crit, loader(n), opt, torch.device("cpu"), epoch=2, **kw)
    return model, crit, stats


def test_weighted_sum_and_logged_terms():
    model, crit, stats = run(n=1)
    # pred = 1: loss = 2*1 + 0.5*1; grad = 2*2*1 + 0.5 = 4.5 -> w = 1 - 0.45
    assert stats["loss"] == pytest.approx(2.5)
    assert stats["loss_a"] == pytest.approx(2.0) and stats["loss_a_unscaled"] == pytest.approx(1.0)
    assert "log_only_unscaled" in stats and "log_only" not in stats
    assert stats["lr"] == 0.1 and stats["nonfinite_steps"] == 0
    assert model.w.item() == pytest.approx(0.55)


def test_grad_clipping():
    model, _, _ = run(n=1, max_norm=0.1)
    assert model.w.item() == pytest.approx(1 - 0.1 * 0.1, abs=1e-5)


def test_nonfinite_loss_stops_with_one_line_error():
    with pytest.raises(NonFiniteLossError) as err:
        run(n=3, nan_at={1})
    msg = str(err.value)
    assert "epoch 2 iteration 1" in msg and "loss_a=nan" in msg and "loss_b=" in msg and "\n" not in msg


def test_skip_nonfinite_skips_step_and_counts():
    model, crit, stats = run(n=3, nan_at={1}, skip_nonfinite=True)
    assert stats["nonfinite_steps"] == 1 and crit.calls == 3


def test_debug_stops_early():
    _, crit, _ = run(n=DEBUG_ITERATIONS + 5, debug=True)
    assert crit.calls == DEBUG_ITERATIONS


def test_amp_bf16_on_cpu_runs():
    model, _, stats = run(n=1, amp=True)
    assert model.autocast_dtype == torch.bfloat16  # the forward really ran under bf16 autocast
    assert stats["loss"] == pytest.approx(2.5, rel=1e-2)
    model, _, _ = run(n=1)
    assert model.autocast_dtype is None


def test_tensorboard_hook_receives_scalars():
    class Writer:
        def __init__(self):
            self.tags = []

        def add_scalar(self, tag, value, step):
            self.tags.append((tag, step))

    w = Writer()
    run(n=2, tb_writer=w)
    assert ("train/loss", 4) in w.tags and ("train/lr", 5) in w.tags


def test_total_loss_sums_only_weighted_terms():
    losses = {"loss_a": torch.tensor(3.0), "class_error": torch.tensor(50.0), "loss_b": torch.tensor(-1.0)}
    total, weighted = total_loss(losses, {"loss_a": 2.0, "loss_b": 0.5, "loss_unused": 9.0})
    assert list(weighted) == ["loss_a", "loss_b"] and weighted["loss_b"].item() == -0.5
    assert total.item() == 5.5


def test_terminal_shows_the_compact_line_info_txt_every_term(tmp_path):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    log = setup_logger(str(tmp_path), stream=Terminal())
    run(n=2)  # second step: w = 0.55, loss = 2 * 0.55^2 + 0.5 * 0.55 = 0.88
    console, info = log.handlers[0].stream.getvalue(), (tmp_path / "info.txt").read_text()
    assert "epoch 2 2/2 eta 0:00:00 loss 0.88 lr 1.0e-01 " in console and "MiB" in console
    assert "loss_a_unscaled" not in console and "loss_a_unscaled: 0.3025" in info
    log.handlers.clear()


def test_results_writer_rounding_and_extra_fields(tmp_path):
    dets = {4: np.array([[1.23456, 2.0, 3.0004, 4.9999, 0.1234567, 2.0]], dtype=np.float64)}
    path = tmp_path / "r.json"
    assert write_coco_results(dets, str(path), fields=lambda i, label: {"file_name": f"{i}.jpg", "tag": label}) == 1
    assert json.loads(path.read_text()) == [{"image_id": 4, "category_id": 2, "bbox": [1.235, 2.0, 3.0, 5.0],
                                             "score": 0.12346, "file_name": "4.jpg", "tag": 2}]
