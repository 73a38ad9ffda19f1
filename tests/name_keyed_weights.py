"""Weights keyed by parameter name: every floating tensor of a state_dict gets a value drawn from a generator
seeded with zlib.crc32 of its key, so the values depend on the key, shape and module kind only, never on
the order modules are built in (a refactor that keeps the keys keeps the values). Used by the golden values
(tests/models/golden.py) and by the tools' tiny checkpoint (tests/tools/conftest.py)."""
import math
import zlib
from typing import Dict, Optional

import torch
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d, nn.LayerNorm, nn.GroupNorm)


def _uniform(key: str, shape, low: float, high: float) -> Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    return torch.rand(shape, generator=g, dtype=torch.float64).mul_(high - low).add_(low).float()


def _fill_rule(key: str, tensor: Tensor, module: nn.Module) -> Optional[Tensor]:
    """The value of one state_dict entry: unit-gain uniform weights, norms near identity,
    small biases, positive running variances. None for integer buffers."""
    if not tensor.is_floating_point():
        return None
    leaf = key.rsplit(".", 1)[-1]
    if isinstance(module, NORMS):
        if leaf == "running_var":
            return _uniform(key, tensor.shape, 0.8, 1.2)
        if leaf == "weight":
            return _uniform(key, tensor.shape, 0.9, 1.1)
        return _uniform(key, tensor.shape, -0.1, 0.1)  # bias, running_mean
    if tensor.dim() < 2:
        return _uniform(key, tensor.shape, -0.1, 0.1)
    fan_in = math.prod(tensor.shape[1:]) if isinstance(module, nn.Conv2d) else tensor.shape[-1]
    bound = math.sqrt(3.0 / fan_in)  # variance 1 / fan_in
    return _uniform(key, tensor.shape, -bound, bound)


@torch.no_grad()
def init_by_name(model: nn.Module) -> nn.Module:
    """Overwrite every floating parameter and buffer with its name-keyed value (see module doc).

    A tensor shared by several keys (DINO's shared heads) takes the value of its smallest key."""
    entries = model.state_dict(keep_vars=True)
    first_key: Dict[int, str] = {}
    for key in sorted(entries):
        first_key.setdefault(id(entries[key]), key)
    for key in first_key.values():
        tensor = entries[key]
        owner = model.get_submodule(key.rsplit(".", 1)[0]) if "." in key else model
        value = _fill_rule(key, tensor, owner)
        if value is not None:
            tensor.copy_(value)
    return model
