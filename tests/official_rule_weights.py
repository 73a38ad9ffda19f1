"""The weight rule of the official-code reference fixtures (tests/data/deformable_detr_reference/README.md):
every floating state_dict entry from a generator seeded with crc32(SALT + key), by the key's name and shape,
and the key lists (keys_<variant>.tsv) that name each entry's rule, aliases, sum and first value.

A key that shares its tensor with an earlier key of the official state_dict (an aliased head) takes the
values generated for that earlier key, named in the list's `aliases` column, whatever order this project's
model registers its modules in."""
import math
import os
import zlib
from typing import Dict, List, NamedTuple, Tuple

import torch
from torch import Tensor

SALT = "fixture-v1"


class KeyRow(NamedTuple):
    key: str
    shape: Tuple[int, ...]
    rule: str
    alias: str  # the earlier key whose values this key holds, or ''
    sum: float
    first: float


def read_keys(path: str) -> List[KeyRow]:
    """The rows of a keys_<variant>.tsv, in the official state_dict order."""
    rows = []
    with open(path) as f:
        for line in f:
            if line.startswith("#") or line.startswith("key\t") or not line.strip():
                continue
            key, shape, _, rule, alias, total, first = line.rstrip("\n").split("\t")
            rows.append(KeyRow(key, tuple(int(x) for x in shape.split("x")) if shape else (), rule,
                               "" if alias == "-" else alias, float(total), float(first)))
    return rows


def rule_value(key: str, shape: Tuple[int, ...]) -> Tensor:
    """The rule's float32 value of one key (the fixture README's code, restated)."""
    g = torch.Generator().manual_seed(zlib.crc32((SALT + key).encode()))
    if key.endswith("running_var"):
        return 1 + 0.1 * torch.rand(shape, generator=g)
    if key.endswith("running_mean"):
        return 0.1 * torch.randn(shape, generator=g)
    if len(shape) >= 2:
        if key.endswith(("query_embed.weight", "level_embed")):
            return torch.randn(shape, generator=g)
        v = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        if key.endswith("in_proj_weight"):
            v[: 2 * shape[0] // 3] *= 4
        elif key.endswith(("out_proj.weight", "output_proj.weight", "linear2.weight")):
            v *= 0.5
        return v
    if key.endswith("weight"):
        return 1 + 0.1 * torch.randn(shape, generator=g)
    return 0.1 * torch.randn(shape, generator=g)


def rule_state(rows: List[KeyRow]) -> Dict[str, Tensor]:
    """The official state_dict the rule gives: key -> tensor, an alias holding its source key's tensor."""
    state: Dict[str, Tensor] = {}
    for row in rows:
        state[row.key] = state[row.alias] if row.alias else rule_value(row.key, row.shape)
    return state


def fixture_path(*parts: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", *parts)
