"""Non-finite losses, --skip_nonfinite, out-of-memory messages and fp16 overflow (GradScaler)."""
import pytest
import torch
from torch import nn

import engine
import main
import models
from util.checkpoint import load_checkpoint
from util.misc import NestedTensor

from reliability_helpers import make_synthetic, read_log, tiny_argv


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return make_synthetic(str(tmp_path_factory.mktemp("syn")))


def patch_build_model(monkeypatch, wrap_model=None, nan_at_train_call=None):
    """Wrap models.build_model (imported by main at run time) to inject faults."""
    real = models.build_model

    def build(args):
        model, criterion, post = real(args)
        if nan_at_train_call is not None:
            calls, forward = [0], criterion.forward

            def nan_forward(outputs, targets, *a, **kw):
                losses = forward(outputs, targets, *a, **kw)
                if criterion.training:
                    calls[0] += 1
                    if calls[0] == nan_at_train_call:
                        losses["loss_bbox"] = losses["loss_bbox"] * float("nan")
                return losses

            criterion.forward = nan_forward
        return (wrap_model(model) if wrap_model else model), criterion, post

    monkeypatch.setattr(models, "build_model", build)


def test_nan_loss_stops_naming_iteration_and_terms_keeping_last_checkpoint(tmp_path, syn, monkeypatch, capsys):
    patch_build_model(monkeypatch, nan_at_train_call=3)  # epoch 1, iteration 0 (2 iterations per epoch)
    code = main.cli(tiny_argv(tmp_path, syn, epochs=2))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "non-finite loss nan at epoch 1 iteration 0" in err and "loss_bbox=nan" in err and "loss_ce=" in err
    assert load_checkpoint(str(tmp_path / "checkpoint.pth"))["epoch"] == 0
    assert not (tmp_path / "checkpoint0001.pth").exists()
    assert "non-finite loss" in (tmp_path / "info.txt").read_text()


def test_skip_nonfinite_skips_and_counts_in_log(tmp_path, syn, monkeypatch):
    patch_build_model(monkeypatch, nan_at_train_call=2)
    main.main(main.build_args(tiny_argv(tmp_path, syn, "--skip_nonfinite", epochs=1)))
    assert read_log(tmp_path)[-1]["train_nonfinite_steps"] == 1


class OOMModel(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, samples, targets=None):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_oom_in_training_is_one_line_with_batch_and_image_size(tmp_path, syn, monkeypatch, capsys):
    patch_build_model(monkeypatch, wrap_model=OOMModel)
    code = main.cli(tiny_argv(tmp_path, syn))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "out of memory during training (epoch 0 iteration 0" in err and "batch size 4" in err
    assert "--amp" in err and "--options batch_size=1" in err and "data_aug_max_size" in err


def test_oom_in_evaluation_suggests_val_batch_size():
    samples = NestedTensor(torch.zeros(2, 3, 8, 12), torch.zeros(2, 8, 12, dtype=torch.bool))
    crit = nn.Module()
    crit.weight_dict = {}
    with pytest.raises(engine.ResourceError, match=r"evaluation \(iteration 0\) with batch size 2 and padded "
                                                   r"image size 8x12.*val_batch_size=1"):
        engine.evaluate(OOMModel(None), crit, {}, [(samples, ({},))], None, torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 AMP + GradScaler needs CUDA")
def test_fp16_overflow_step_is_skipped_by_grad_scaler():
    class Big(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1, device="cuda"))

        def forward(self, samples, targets=None):
            return {"pred": samples.tensors.mean() * self.w}

    class Crit(nn.Module):
        weight_dict = {"loss": 1.0}

        def forward(self, outputs, targets):
            return {"loss": outputs["pred"].half() * 6e4}  # finite fp16 loss; x65536 scaling overflows its fp16 grad

    model = Big()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cuda")
    batch = [(NestedTensor(torch.ones(1, 1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.bool)), ({},))]
    before = scaler.get_scale()
    engine.train_one_epoch(model, Crit(), batch, opt, torch.device("cuda"), 0, amp=True, scaler=scaler)
    assert scaler.get_scale() < before  # overflow detected: step skipped, scale lowered
    assert model.w.item() == 1.0
