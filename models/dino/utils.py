"""Small building blocks shared by DINO's transformer and heads."""
import math
from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLP(nn.Module):
    """A stack of Linear layers with ReLU between them (none after the last).

    Parameters are named layers.0 ... layers.{num_layers-1}, as in DINO's checkpoints.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, outs))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def get_activation_fn(name: str):
    """Activation by config name (transformer_activation)."""
    table = {"relu": F.relu, "gelu": F.gelu, "glu": F.glu, "prelu": nn.PReLU(), "selu": F.selu}
    if name not in table:
        raise ValueError(f"transformer_activation={name!r} is not one of {sorted(table)}")
    return table[name]


def gen_sineembed_for_position(pos_tensor: Tensor, d_model: int = 256) -> Tensor:
    """Sine embedding of normalised boxes or points.

    pos_tensor (..., 2) as (x, y) or (..., 4) as (cx, cy, w, h), in [0, 1].
    Returns (..., d_model) or (..., 2 * d_model): d_model/2 features per coordinate, in
    the order (y, x) or (y, x, w, h), temperature 10000.
    """
    half = d_model // 2
    scale = 2 * math.pi
    dim_t = torch.arange(half, dtype=torch.float32, device=pos_tensor.device)
    dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / half)

    def embed(coord: Tensor) -> Tensor:
        v = coord[..., None] * scale / dim_t
        return torch.stack((v[..., 0::2].sin(), v[..., 1::2].cos()), dim=-1).flatten(-2)

    parts = [embed(pos_tensor[..., 1]), embed(pos_tensor[..., 0])]
    if pos_tensor.shape[-1] == 4:
        parts += [embed(pos_tensor[..., 2]), embed(pos_tensor[..., 3])]
    elif pos_tensor.shape[-1] != 2:
        raise ValueError(f"positions must end in 2 or 4 values, got {tuple(pos_tensor.shape)}")
    return torch.cat(parts, dim=-1)


def gen_encoder_output_proposals(memory: Tensor, memory_padding_mask: Tensor, spatial_shapes: List):
    """One box proposal per encoder token, for two-stage query selection.

    Each token proposes a box centred on its pixel, of size 0.05 * 2**level of the valid
    image. memory (B, S, C), memory_padding_mask (B, S) True = padding,
    spatial_shapes [(H_l, W_l)] -> (memory with padded/invalid tokens zeroed (B, S, C),
    proposals as logits (B, S, 4), +inf where padded or too close to the border).
    """
    bs = memory.shape[0]
    proposals = []
    start = 0
    for lvl, (h, w) in enumerate(spatial_shapes):
        mask = memory_padding_mask[:, start:start + h * w].view(bs, h, w)
        valid_h = (~mask[:, :, 0]).sum(1)
        valid_w = (~mask[:, 0, :]).sum(1)
        ys, xs = torch.meshgrid(torch.linspace(0, h - 1, h, dtype=torch.float32, device=memory.device),
                                torch.linspace(0, w - 1, w, dtype=torch.float32, device=memory.device),
                                indexing="ij")
        grid = torch.stack([xs, ys], -1)  # (H, W, 2) as (x, y)
        scale = torch.stack([valid_w, valid_h], 1).view(bs, 1, 1, 2)
        grid = (grid.unsqueeze(0).expand(bs, -1, -1, -1) + 0.5) / scale
        wh = torch.ones_like(grid) * 0.05 * (2.0 ** lvl)
        proposals.append(torch.cat((grid, wh), -1).view(bs, -1, 4))
        start += h * w
    proposals = torch.cat(proposals, 1)
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
    proposals = torch.log(proposals / (1 - proposals))
    invalid = memory_padding_mask.unsqueeze(-1) | ~valid
    proposals = proposals.masked_fill(invalid, float("inf"))
    output_memory = memory.masked_fill(invalid, 0.0)
    return output_memory, proposals
