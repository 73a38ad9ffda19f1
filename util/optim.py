"""Optimizer parameter groups, LR schedulers and a model EMA, with DINO's semantics."""
import copy
from typing import Dict, List, Sequence

import torch
from torch import nn


def _matches(name: str, keywords: Sequence[str]) -> bool:
    return any(k in name for k in keywords)


def param_groups(model: nn.Module, lr: float, lr_backbone: float, lr_backbone_names: Sequence[str],
                 param_dict_type: str = "default") -> List[Dict]:
    """DINO's 'default' grouping: params whose name contains a backbone name train at lr_backbone.

    lr_backbone <= 0 freezes those params (requires_grad=False) instead.
    """
    if param_dict_type != "default":
        raise ValueError(f"param_dict_type={param_dict_type!r} is not supported; use 'default'")
    backbone, rest = [], []
    for name, p in model.named_parameters():
        if _matches(name, lr_backbone_names):
            if lr_backbone <= 0:
                p.requires_grad_(False)
            if p.requires_grad:
                backbone.append(p)
        elif p.requires_grad:
            rest.append(p)
    groups = [{"params": rest, "lr": lr}]
    if backbone:
        groups.append({"params": backbone, "lr": lr_backbone})
    return groups


def build_optimizer(model: nn.Module, args) -> torch.optim.Optimizer:
    """AdamW over param_groups(...) with args.lr, args.lr_backbone, args.weight_decay."""
    groups = param_groups(model, args.lr, args.lr_backbone, args.lr_backbone_names,
                          getattr(args, "param_dict_type", "default"))
    return torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, args, steps_per_epoch: int):
    """Returns (scheduler, per_iteration). OneCycleLR steps per iteration; Step/MultiStep per epoch."""
    if args.onecyclelr:
        sched = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=args.lr, steps_per_epoch=max(1, steps_per_epoch), epochs=args.epochs, pct_start=0.2)
        return sched, True
    if args.multi_step_lr:
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(args.lr_drop_list)), False
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_drop), False


class ModelEMA:
    """Exponential moving average of a model's state (params and float buffers).

    ema = decay * ema + (1 - decay) * model, applied to every floating entry of
    state_dict(); integer buffers are copied. `module` is a frozen deep copy.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        src = model.state_dict()
        for key, ema_value in self.module.state_dict().items():
            value = src[key].detach()
            if ema_value.is_floating_point():
                ema_value.mul_(self.decay).add_(value.to(ema_value.dtype), alpha=1 - self.decay)
            else:
                ema_value.copy_(value)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state_dict: Dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state_dict)
