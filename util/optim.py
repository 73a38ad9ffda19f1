"""Optimizer parameter groups, LR schedulers and a model EMA, with DINO's semantics.

Parameter groups by name (DINO's `param_dict_type`): 'default' trains parameters whose name contains one of
`lr_backbone_names` at `lr_backbone` and the rest at `lr`; 'ddetr_in_mmdet' (Deformable DETR's grouping, DINO's
name for it) also trains those whose name contains one of `lr_linear_proj_names` at `lr * lr_linear_proj_mult`
(Deformable DETR: `reference_points` and `sampling_offsets` at 0.1). DINO's files set the multiplier keys
but keep 'default', which does not read them, as DINO does."""
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from util.config_schema import Key, KeyGroup, bool_key, choice_key, float_key, int_key, prob_key

PARAM_DICT_TYPES = ("default", "ddetr_in_mmdet")

def _warmup_fits_schedule(cfg):
    if cfg["lr_warmup_iters"] and cfg["onecyclelr"]:
        return (f"lr_warmup_iters={cfg['lr_warmup_iters']} with onecyclelr=True: OneCycleLR warms up by itself; set "
                f"lr_warmup_iters=0 or onecyclelr=False")
    return None


OPTIMISATION_KEYS = KeyGroup("optimisation", "optimisation", {
    "lr": float_key("learning rate of the transformer and heads (AdamW)", 0, low_open=True),
    "lr_backbone": float_key("learning rate of parameters named in lr_backbone_names; <= 0 freezes them"),
    "lr_backbone_names": Key("list[str]", "substrings of the backbone's parameter names", length=(1, None)),
    "param_dict_type": choice_key("parameter groups: 'default' (backbone names at lr_backbone, the rest at lr) or "
                                  "'ddetr_in_mmdet' (also lr_linear_proj_names at lr x lr_linear_proj_mult, "
                                  "Deformable DETR's)", *PARAM_DICT_TYPES),
    "lr_linear_proj_names": Key("list[str]", "substrings of the parameter names trained at lr x lr_linear_proj_mult "
                                "(with param_dict_type='ddetr_in_mmdet'; none = none)", none_ok=True),
    "lr_linear_proj_mult": float_key("learning-rate factor of the lr_linear_proj_names parameters (with "
                                     "param_dict_type='ddetr_in_mmdet')", 0),
    "batch_size": int_key("training images per process", 1),
    "weight_decay": float_key("AdamW weight decay", 0),
    "epochs": int_key("training epochs", 1),
    "lr_drop": int_key("StepLR: divide the lr by 10 every this many epochs", 1),
    "save_checkpoint_interval": int_key("write checkpointNNNN.pth every this many epochs", 1),
    "clip_max_norm": float_key("gradient-norm clipping (<= 0: off)"),
    "onecyclelr": bool_key("OneCycleLR stepped per iteration instead of StepLR"),
    "multi_step_lr": bool_key("MultiStepLR at lr_drop_list instead of StepLR"),
    "lr_drop_list": Key("list[int]", "MultiStepLR milestones (epochs)", 1),
    "lr_warmup_iters": int_key("linear lr warm-up over the first this many optimizer steps, on top of StepLR / "
                               "MultiStepLR (0: none)", 0),
    "lr_warmup_factor": float_key("lr multiplier at the first step of the warm-up (rises linearly to 1)", 0, 1.0,
                                  low_open=True),
    "use_ema": bool_key("keep and evaluate an exponential moving average of the weights"),
    "ema_decay": prob_key("EMA decay per iteration"),
    "ema_epoch": int_key("first epoch that updates the EMA", 0),
}, relations=(_warmup_fits_schedule,))


def _matches(name: str, keywords: Sequence[str]) -> bool:
    return any(k in name for k in keywords)


def param_groups(model: nn.Module, lr: float, lr_backbone: float, lr_backbone_names: Sequence[str],
                 param_dict_type: str = "default", lr_linear_proj_names: Optional[Sequence[str]] = None,
                 lr_linear_proj_mult: float = 1.0) -> List[Dict]:
    """Parameter groups by name, in DINO's order (see the module doc): [rest at lr, backbone at lr_backbone]
    for 'default'; [rest, backbone, linear_proj at lr * lr_linear_proj_mult] for 'ddetr_in_mmdet' (a name
    matching both a backbone and a linear-proj pattern counts as backbone). Empty groups are left out.

    lr_backbone <= 0 freezes the backbone params (requires_grad=False) instead.
    """
    if param_dict_type not in PARAM_DICT_TYPES:
        raise ValueError(f"param_dict_type={param_dict_type!r} is not supported; use one of {PARAM_DICT_TYPES}")
    proj_names = list(lr_linear_proj_names or []) if param_dict_type == "ddetr_in_mmdet" else []
    backbone, proj, rest = [], [], []
    for name, p in model.named_parameters():
        if _matches(name, lr_backbone_names):
            if lr_backbone <= 0:
                p.requires_grad_(False)
            if p.requires_grad:
                backbone.append(p)
        elif not p.requires_grad:
            continue
        elif _matches(name, proj_names):
            proj.append(p)
        else:
            rest.append(p)
    groups = [{"params": rest, "lr": lr}]
    if backbone:
        groups.append({"params": backbone, "lr": lr_backbone})
    if proj:
        groups.append({"params": proj, "lr": lr * lr_linear_proj_mult})
    return groups


FUSED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def build_optimizer(model: nn.Module, args) -> torch.optim.Optimizer:
    """AdamW over param_groups(...) of the config (lr, lr_backbone(_names), param_dict_type,
    lr_linear_proj_names / _mult) with args.weight_decay; build it after model.to(device).

    The fused kernel (one pass over all parameters) where torch has one for the parameters'
    device: on 2 CPU cores it takes a DINO-R50 step's AdamW update from 0.26 s (torch's
    per-parameter loop, its CPU default) to 0.07 s, with the same result to fp32 rounding."""
    groups = param_groups(model, args.lr, args.lr_backbone, args.lr_backbone_names, args.param_dict_type,
                          args.lr_linear_proj_names, args.lr_linear_proj_mult)
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in FUSED_DTYPES for p in model.parameters())
    return torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay, fused=fused or None)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, args, steps_per_epoch: int):
    """Returns (scheduler, per_iteration). OneCycleLR steps per iteration; Step/MultiStep per epoch, with
    lr_warmup_iters > 0 wrapped in WarmupThenEpochs."""
    if args.onecyclelr:
        sched = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=args.lr, steps_per_epoch=max(1, steps_per_epoch), epochs=args.epochs, pct_start=0.2)
        return sched, True
    if args.multi_step_lr:
        sched = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(args.lr_drop_list))
    else:
        sched = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_drop)
    if args.lr_warmup_iters > 0:
        sched = WarmupThenEpochs(optimizer, sched, args.lr_warmup_iters, args.lr_warmup_factor)
    return sched, False


class WarmupThenEpochs:
    """An epoch scheduler (StepLR / MultiStepLR, stepped once per epoch by the training loop) under a linear
    warm-up over the first `iters` optimizer steps (mmdetection's LinearLR by iteration + MultiStepLR by
    epoch, as DDQ-DETR trains): the lr of step i < iters is the epoch schedule's times
    factor + (1 - factor) * i / iters.

    The warm-up counts optimizer steps through a step hook of the optimizer, so the training loop needs
    no per-iteration call, and a skipped step (non-finite loss, AMP overflow) does not advance it. Both
    schedulers are torch's chainable ones, so their factors multiply."""

    def __init__(self, optimizer: torch.optim.Optimizer, epochs, iters: int, factor: float):
        self.epochs = epochs
        self.warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=factor, end_factor=1.0,
                                                        total_iters=iters)
        optimizer.register_step_post_hook(self._after_optimizer_step)

    def _after_optimizer_step(self, optimizer, args, kwargs) -> None:
        if self.warmup.last_epoch < self.warmup.total_iters:
            self.warmup.step()

    def step(self) -> None:
        """One epoch."""
        self.epochs.step()

    def state_dict(self) -> Dict:
        return {"epochs": self.epochs.state_dict(), "warmup": self.warmup.state_dict()}

    def load_state_dict(self, state: Dict) -> None:
        self.epochs.load_state_dict(state["epochs"])
        self.warmup.load_state_dict(state["warmup"])


class ModelEMA:
    """Exponential moving average of a model's state (params and float buffers), on timm's ModelEmaV3.

    After each update: ema = decay * ema + (1 - decay) * model for every floating entry of
    state_dict() (timm's lerp with weight 1 - decay: the same maths, one rounding per step
    instead of the former mul-then-add's two; over 300 steps at decay 0.9997 the two differ
    by < 2e-5 relative and lerp is 3-10x closer to a float64 EMA), integer buffers
    (BatchNorm's num_batches_tracked) copied. The first update averages too (timm
    with step=None; torch.optim.swa_utils.AveragedModel instead copies the model on its
    first update, which is why it is not used). bf16 stochastic rounding is off so a
    low-precision EMA rounds as plain arithmetic would. `module` is a frozen deep copy;
    state_dict() is that copy's plain state_dict (the model's keys: ckpt['ema_model']).
    """

    def __init__(self, model: nn.Module, decay: float):
        from timm.utils.model_ema import ModelEmaV3  # imported here: timm costs ~1 s, only EMA runs need it

        self._ema = ModelEmaV3(model, decay=decay, stochastic_rounding=False)
        for p in self._ema.module.parameters():
            p.requires_grad_(False)
        self._keys = list(self._ema.module.state_dict())

    @property
    def module(self) -> nn.Module:
        return self._ema.module

    @property
    def decay(self) -> float:
        return self._ema.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        # timm pairs the two state_dicts by position: check they hold the same keys (a DDP
        # wrapper's 'module.' prefix or another model would otherwise mix unrelated tensors)
        keys = list(model.state_dict())
        if keys != self._keys:
            raise ValueError(f"ModelEMA.update: the model's state_dict keys differ from the EMA copy's "
                             f"({len(keys)} vs {len(self._keys)} keys, first {keys[:1]} vs {self._keys[:1]}); "
                             f"pass the unwrapped model (model.module under DDP)")
        self._ema.update(model)  # step=None: the constant decay, no warm-up

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state_dict: Dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state_dict)
