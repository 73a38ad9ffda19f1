"""The one tiny configuration every test builds on: the project's config files with small sizes.

Two views of the same sizes:
  * MODEL: the model the model tests build in-process (2 encoder + 2 decoder layers, so that
    EMCA mixes layers and the decoder refines boxes twice), pure-PyTorch deformable attention
    so the numbers do not depend on which kernel a machine compiled;
  * RUN: width 64 with 1 + 1 layers and 64-96 px training scales, for end-to-end
    runs of main.py and the tools (`--options` strings from `options()`).
A test states only what it changes (e.g. `options(RUN, epochs=2)`); the sizes live here.
"""
import argparse
import os
from typing import Any, Dict, List, Tuple

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODEL: Dict[str, Any] = dict(
    backbone="resnet18", hidden_dim=32, nheads=4, dim_feedforward=64, enc_layers=2, dec_layers=2,
    num_queries=10, num_select=10, num_classes=7, dn_labelbook_size=7, dn_number=4, msda_backend="pytorch")

# width 64: GroupNorm(32) of the input projections then sees 2 channels per group, so a training
# batch of one 64 px image (a 1 x 1 stride-64 level) still has more than one value per group
RUN: Dict[str, Any] = dict(
    {k: v for k, v in MODEL.items() if k != "msda_backend"}, hidden_dim=64, enc_layers=1, dec_layers=1,
    data_aug_scales=[64], data_aug_max_size=96, data_aug_scales2_resize=[64], data_aug_scales2_crop=[48, 64],
    # DINO's checkpoint files: one per epoch, the full best one, optimizer state in the last (the synthetic
    # demo config keeps fewer: engine/checkpoint_policy.py)
    save_checkpoint_interval=1, keep_checkpoints=None, best_checkpoint="full", final_checkpoint_optimizer=True)


def _format(value: Any) -> str:
    """A config value as `--options` text (util.slconfig.parse_option_value reads it back)."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format(v) for v in value) + "]"
    return str(value)


def options(base: Dict[str, Any] = RUN, **overrides) -> List[str]:
    """`KEY=VALUE` strings for main.py / tools `--options`: `base` updated with `overrides`."""
    return [f"{k}={_format(v)}" for k, v in dict(base, **overrides).items()]


# DETR's tiny model: MODEL's sizes without the deformable family's keys (DETR refuses them), and no dropout
# (DINO's value), so that its training numbers draw nothing at random
DETR_MODEL: Dict[str, Any] = dict({k: v for k, v in MODEL.items() if k not in ("dn_labelbook_size", "dn_number",
                                                                               "msda_backend")}, dropout=0.0)

# the tiny run of DETR (RUN's sizes and data) for main.py and the tools
DETR_RUN: Dict[str, Any] = dict({k: v for k, v in RUN.items() if k not in ("dn_labelbook_size", "dn_number")},
                                dropout=0.0)

# Deformable DETR's: the same sizes without DINO's denoising keys, dropout off as in DINO's
DEFORMABLE_DETR_MODEL: Dict[str, Any] = dict(
    {k: v for k, v in MODEL.items() if not k.startswith("dn_")}, dropout=0.0)

# every registered detector's tiny model: (its config file under config/, the sizes); tests/models/
# test_golden.py checks that each detector of models/registry.py has one
TINY_MODELS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "dino": ("DINO/DINO_4scale.py", MODEL),
    "detr": ("DETR/detr_r50.py", DETR_MODEL),
    "deformable_detr": ("DeformableDETR/deformable_detr.py", DEFORMABLE_DETR_MODEL),
    "ddq_detr": ("DDQ/DDQ_4scale.py", MODEL),
}


def config_args(config: str = "DINO/DINO_4scale.py", **overrides) -> argparse.Namespace:
    """Every key of config/<config> as a namespace, with `overrides` applied."""
    from engine.config import load_config
    from models import apply_runtime_config

    # checked like main.build_args does; no model test reaches torch.hub (tests/models/test_backbone.py fakes it)
    cfg = load_config(os.path.join(ROOT, "config", config), dict({"backbone_weights": None}, **overrides))
    args = argparse.Namespace(**cfg)
    apply_runtime_config(args)  # what main.py and the tools do with msda_backend
    return args


def tiny_args(detector: str = "dino", **overrides) -> argparse.Namespace:
    """The tiny model of `detector` (TINY_MODELS) with `overrides`, as build_model reads it."""
    config, sizes = TINY_MODELS[detector]
    return config_args(config, **dict(sizes, **overrides))


def tiny_batch(seed: int = 0):
    """Two padded images of different sizes, (3, 64, 96) and (3, 48, 64), and their targets
    (3 boxes in all, normalised cxcywh); the pixels come from a generator seeded with `seed`."""
    from util.misc import nested_tensor_from_tensor_list
    g = torch.Generator().manual_seed(seed)
    images = [torch.randn(3, 64, 96, generator=g), torch.randn(3, 48, 64, generator=g)]
    targets = [dict(labels=torch.tensor([1, 3]), boxes=torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.3, 0.1, 0.1]])),
               dict(labels=torch.tensor([2]), boxes=torch.tensor([[0.4, 0.6, 0.3, 0.2]]))]
    return nested_tensor_from_tensor_list(images), targets


# the Swin of tests/data/dino_swin_tiny (DINO's own implementation at width 8, depth 2 per stage)
TINY_SWIN = dict(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), drop_path_rate=0.0)
