"""Param groups, schedulers and EMA (util/optim.py)."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from util.optim import ModelEMA, build_lr_scheduler, build_optimizer, param_groups


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(2, 2))  # names start with 'backbone.0'
        self.head = nn.Linear(2, 1)


def test_backbone_group_and_freeze():
    m = Tiny()
    groups = param_groups(m, 1e-4, 1e-5, ["backbone.0"])
    assert [g["lr"] for g in groups] == [1e-4, 1e-5] and len(groups[1]["params"]) == 2
    groups = param_groups(m, 1e-4, 0.0, ["backbone.0"])
    assert len(groups) == 1 and not m.backbone[0].weight.requires_grad
    with pytest.raises(ValueError, match="param_dict_type"):
        param_groups(m, 1e-4, 1e-5, ["backbone.0"], "large_wd")


class WithProjections(Tiny):
    def __init__(self):
        super().__init__()
        self.reference_points = nn.Linear(2, 2)
        self.attn = nn.ModuleDict({"sampling_offsets": nn.Linear(2, 2)})


def test_linear_projection_group_by_name():
    """'ddetr_in_mmdet' (Deformable DETR's groups): names matching lr_linear_proj_names train at lr x mult, in a
    third group after the backbone; 'default' (DINO) does not read those keys."""
    m = WithProjections()
    names = ["reference_points", "sampling_offsets"]
    groups = param_groups(m, 2e-4, 2e-5, ["backbone.0"], "ddetr_in_mmdet", names, 0.1)
    assert [g["lr"] for g in groups] == [2e-4, 2e-5, pytest.approx(2e-5)]
    assert [len(g["params"]) for g in groups] == [2, 2, 4]
    assert groups[2]["params"][0] is m.reference_points.weight
    default = param_groups(WithProjections(), 2e-4, 2e-5, ["backbone.0"], "default", names, 0.1)
    assert [len(g["params"]) for g in default] == [6, 2]


def test_optimizer_reads_the_grouping_keys():
    opt = build_optimizer(WithProjections(), _args(param_dict_type="ddetr_in_mmdet", lr_linear_proj_mult=0.5))
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-4, 5e-4]


def _args(**kw):
    base = dict(lr=1e-3, lr_backbone=1e-4, lr_backbone_names=["backbone.0"], param_dict_type="default",
                lr_linear_proj_names=["reference_points", "sampling_offsets"], lr_linear_proj_mult=0.1,
                weight_decay=1e-4, onecyclelr=False, multi_step_lr=False, lr_drop=2, lr_drop_list=[1, 3], epochs=4,
                lr_warmup_iters=0, lr_warmup_factor=1e-4)
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.mark.parametrize("kw,kind,per_iter", [({}, "StepLR", False), ({"multi_step_lr": True}, "MultiStepLR", False),
                                              ({"onecyclelr": True}, "OneCycleLR", True)])
def test_scheduler_choice(kw, kind, per_iter):
    args = _args(**kw)
    opt = build_optimizer(Tiny(), args)
    assert isinstance(opt, torch.optim.AdamW)
    sched, it = build_lr_scheduler(opt, args, steps_per_epoch=3)
    assert type(sched).__name__ == kind and it == per_iter


def test_adamw_is_fused_and_equals_the_per_parameter_loop():
    torch.manual_seed(0)
    a, b = Tiny(), Tiny()
    b.load_state_dict(a.state_dict())
    fused = build_optimizer(a, _args())
    loop = torch.optim.AdamW(param_groups(b, 1e-3, 1e-4, ["backbone.0"]), lr=1e-3, weight_decay=1e-4, foreach=False)
    assert fused.param_groups[0]["fused"] is True
    x = torch.randn(8, 2)
    for _ in range(20):
        for m, opt in ((a, fused), (b, loop)):
            opt.zero_grad()
            m.head(m.backbone(x)).square().sum().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=1e-6, atol=1e-7)


def test_step_lr_drops_after_lr_drop_epochs():
    args = _args()
    opt = build_optimizer(Tiny(), args)
    sched, _ = build_lr_scheduler(opt, args, 1)
    for _ in range(2):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_warmup_rises_linearly_per_optimizer_step_under_the_epoch_schedule():
    args = _args(lr_warmup_iters=4, lr_warmup_factor=0.2, lr_drop=1)
    model = Tiny()
    opt = build_optimizer(model, args)
    sched, per_iteration = build_lr_scheduler(opt, args, steps_per_epoch=10)
    assert not per_iteration

    def head_lr_after_steps(n):
        for _ in range(n):
            opt.zero_grad()
            model.head(model.backbone(torch.ones(1, 2))).sum().backward()
            opt.step()
        return opt.param_groups[0]["lr"]

    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.2)  # the first step's
    assert head_lr_after_steps(1) == pytest.approx(1e-3 * 0.4)  # + (1 - 0.2) / 4 per step
    assert head_lr_after_steps(2) == pytest.approx(1e-3 * 0.8)
    state = sched.state_dict()
    assert head_lr_after_steps(1) == pytest.approx(1e-3)  # warm-up over
    assert head_lr_after_steps(3) == pytest.approx(1e-3)  # and stays over
    sched.step()  # an epoch: StepLR drops by 10 after lr_drop=1 epoch
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    # a resumed run continues the warm-up where it was
    again = build_optimizer(Tiny(), args)
    resumed, _ = build_lr_scheduler(again, args, steps_per_epoch=10)
    resumed.load_state_dict(state)
    assert resumed.warmup.last_epoch == 3 and resumed.epochs.last_epoch == 0


def test_warmup_with_onecyclelr_is_refused():
    from util.optim import OPTIMISATION_KEYS
    cfg = dict(lr_warmup_iters=10, onecyclelr=True)
    assert "lr_warmup_iters=10 with onecyclelr=True" in OPTIMISATION_KEYS.relations[0](cfg)
    assert OPTIMISATION_KEYS.relations[0](dict(cfg, lr_warmup_iters=0)) is None


def test_ema_update_and_state_roundtrip():
    m = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(0.0)
    ema = ModelEMA(m, decay=0.5)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema.update(m)
    assert ema.module.weight.item() == pytest.approx(0.5)
    other = ModelEMA(nn.Linear(1, 1, bias=False), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.module.weight.item() == pytest.approx(0.5)


class WithBuffers(nn.Module):
    """Linear + BatchNorm: float params, float running stats and the int64 num_batches_tracked."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x):
        return self.bn(self.lin(x))


def test_ema_maths_float_entries_averaged_int_buffers_copied():
    torch.manual_seed(0)
    model, decay = WithBuffers(), 0.9
    ema = ModelEMA(model, decay)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(20):
        model.train()
        model(torch.randn(8, 3)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        ema.update(model)
        for k, v in model.state_dict().items():  # the maths as written: decay * ema + (1 - decay) * model
            reference[k] = decay * reference[k] + (1 - decay) * v if v.is_floating_point() else v.clone()
    state = ema.state_dict()
    assert list(state) == list(model.state_dict())  # ckpt['ema_model']: a plain state_dict, the model's keys
    assert state["bn.num_batches_tracked"].dtype == torch.int64 and state["bn.num_batches_tracked"].item() == 20
    for k, v in reference.items():
        torch.testing.assert_close(state[k], v, rtol=1e-6, atol=1e-7)
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training


def test_ema_first_update_averages_rather_than_copies():
    m = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(2.0)
    ema = ModelEMA(m, decay=0.75)
    with torch.no_grad():
        m.weight.fill_(6.0)
    ema.update(m)
    assert ema.module.weight.item() == pytest.approx(0.75 * 2 + 0.25 * 6)  # a copy would give 6
    assert m.weight.item() == 6.0  # the model itself is untouched


def test_ema_loads_a_plain_state_dict_and_rejects_another_model():
    m = WithBuffers()
    saved = {k: v + 1 if v.is_floating_point() else v for k, v in m.state_dict().items()}
    ema = ModelEMA(WithBuffers(), 0.99)
    ema.load_state_dict(saved)  # as resume does with ckpt['ema_model'] of an older checkpoint
    assert torch.equal(ema.module.lin.weight, saved["lin.weight"])
    with pytest.raises(ValueError, match="pass the unwrapped model"):
        ema.update(nn.Sequential(m))  # keys 0.lin.weight, ...: a wrapper
