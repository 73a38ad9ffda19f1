"""The official DETR fixture (tests/data/detr_reference/, its README says how it was made): its weight rule
keyed by parameter name, its key list, and an official-layout state_dict built from that list alone.

Used by tests/models/test_detr_reference.py (outputs against the official code) and by the checkpoint tests
(tests/test_detr_checkpoints.py), which need a file in the official layout without the official download.
"""
import math
import os
import zlib
from typing import Dict, List, Tuple

import torch

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "detr_reference")
SALT = "fixture-v1"


def rule_value(key: str, shape) -> torch.Tensor:
    """The fixture's value of state_dict entry `key` (its README, section "Weights: the rule")."""
    g = torch.Generator().manual_seed(zlib.crc32((SALT + key).encode()))
    shape = tuple(shape)
    if key.endswith("running_var"):
        return 1 + 0.1 * torch.rand(shape, generator=g)
    if key.endswith("running_mean"):
        return 0.1 * torch.randn(shape, generator=g)
    if len(shape) >= 2:
        if key.endswith(("query_embed.weight", "level_embed")):  # embedding tables at the official N(0, 1)
            return torch.randn(shape, generator=g)
        value = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        if key.endswith("in_proj_weight"):  # rows [q; k; v]: sharper attention
            value[: 2 * shape[0] // 3] *= 4
        elif key.endswith(("out_proj.weight", "output_proj.weight", "linear2.weight")):
            value *= 0.5  # the last linear of each residual branch
        return value
    if key.endswith("weight"):  # norm scales
        return 1 + 0.1 * torch.randn(shape, generator=g)
    return 0.1 * torch.randn(shape, generator=g)  # biases


@torch.no_grad()
def fill_by_rule(model: torch.nn.Module) -> torch.nn.Module:
    """Every floating state_dict entry of `model` set to its rule value (DETR has no aliased tensors)."""
    for key, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            tensor.copy_(rule_value(key, tensor.shape))
    return model


def read_keys() -> List[Tuple[str, Tuple[int, ...], float, float]]:
    """(key, shape, first element, sum) of every row of keys_r50.tsv (the official R50's state_dict), in order."""
    rows = []
    with open(os.path.join(DATA, "keys_r50.tsv")) as f:
        for line in f:
            if line.startswith("#") or line.startswith("key\t"):
                continue
            key, shape, _, _, _, total, first = line.rstrip("\n").split("\t")
            rows.append((key, tuple(int(s) for s in shape.split("x")), float(first), float(total)))
    return rows


def official_r50_state() -> Dict[str, torch.Tensor]:
    """A DETR R50 state_dict in the official layout, made from the official key list alone (not from this
    project's model), with the rule's values."""
    return {key: rule_value(key, shape) for key, shape, _, _ in read_keys()}


def write_official_r50(path: str) -> Dict[str, torch.Tensor]:
    """Save official_r50_state() at `path` as DETR's main.py stores its checkpoints: {'model', 'args'} with an
    argparse Namespace (a subset of DETR's arguments) and no integrity digest; returns the state."""
    import argparse
    state = official_r50_state()
    stored = argparse.Namespace(backbone="resnet50", dilation=False, hidden_dim=256, enc_layers=6, dec_layers=6,
                                dim_feedforward=2048, nheads=8, num_queries=100, pre_norm=False, lr=1e-4,
                                epochs=500, lr_drop=400, dataset_file="coco", masks=False, batch_size=2)
    torch.save({"model": state, "args": stored}, path)
    return state
