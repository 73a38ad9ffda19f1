"""Tiny DINO configs for model tests: DINO_4scale.py's values with small sizes (imported by the tests)."""
import argparse
import os

import torch

from util.slconfig import SLConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = dict(backbone="resnet18", hidden_dim=64, nheads=4, num_queries=30, enc_layers=2, dec_layers=2,
            dim_feedforward=128, num_classes=7, dn_labelbook_size=7, dn_number=50, num_select=20,
            msda_backend="pytorch")


def config_args(config: str = "DINO_4scale.py", **overrides) -> argparse.Namespace:
    cfg = SLConfig.fromfile(os.path.join(ROOT, "config", "DINO", config)).to_dict()
    cfg.update(overrides)
    return argparse.Namespace(**cfg)


def tiny_args(**overrides) -> argparse.Namespace:
    return config_args(**dict(TINY, **overrides))


def tiny_batch(seed: int = 0):
    """Two padded images of different sizes and their targets (normalised cxcywh boxes)."""
    from util.misc import nested_tensor_from_tensor_list
    g = torch.Generator().manual_seed(seed)
    images = [torch.randn(3, 64, 96, generator=g), torch.randn(3, 48, 64, generator=g)]
    targets = [dict(labels=torch.tensor([1, 3]), boxes=torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.3, 0.1, 0.1]])),
               dict(labels=torch.tensor([2]), boxes=torch.tensor([[0.4, 0.6, 0.3, 0.2]]))]
    return nested_tensor_from_tensor_list(images), targets
