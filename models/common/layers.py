"""Building blocks every detector shares: the MLP head, activations, sine embeddings of boxes, logits of boxes."""
import math

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
    table = {"relu": F.relu, "gelu": F.gelu, "glu": F.glu, "selu": F.selu}  # stateless: no parameters to register
    if name not in table:
        raise ValueError(f"transformer_activation={name!r} is not one of {sorted(table)}")
    return table[name]


def gen_sineembed_for_position(pos_tensor: Tensor, d_model: int = 256, x_first: bool = False) -> Tensor:
    """Sine embedding of normalised boxes or points.

    pos_tensor (..., 2) as (x, y) or (..., 4) as (cx, cy, w, h), in [0, 1].
    Returns (..., d_model) or (..., 2 * d_model): d_model/2 features per coordinate, in
    the order (y, x) or (y, x, w, h) (DINO), or with x_first in the input's order (x, y) or
    (cx, cy, w, h) (Deformable DETR's two-stage query embedding); temperature 10000.
    """
    half = d_model // 2
    scale = 2 * math.pi
    dim_t = torch.arange(half, dtype=coordinate_dtype(pos_tensor), device=pos_tensor.device)
    dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / half)

    def embed(coord: Tensor) -> Tensor:
        v = coord[..., None] * scale / dim_t
        return torch.stack((v[..., 0::2].sin(), v[..., 1::2].cos()), dim=-1).flatten(-2)

    parts = [embed(pos_tensor[..., 1]), embed(pos_tensor[..., 0])]
    if x_first:
        parts.reverse()
    if pos_tensor.shape[-1] == 4:
        parts += [embed(pos_tensor[..., 2]), embed(pos_tensor[..., 3])]
    elif pos_tensor.shape[-1] != 2:
        raise ValueError(f"positions must end in 2 or 4 values, got {tuple(pos_tensor.shape)}")
    return torch.cat(parts, dim=-1)


def inverse_sigmoid(x: Tensor, eps: float = 1e-3) -> Tensor:
    """logit(x) with x clamped to [eps, 1 - eps]; DINO uses eps 1e-3, Deformable DETR 1e-5."""
    x = x.clamp(min=0, max=1)
    x1 = x.clamp(min=eps)
    x2 = (1 - x).clamp(min=eps)
    return torch.log(x1 / x2)


def refine_boxes(delta: Tensor, reference: Tensor, eps: float = 1e-3) -> Tensor:
    """Boxes (..., 4) sigmoid from a box head's output `delta` (..., 4) and reference points or boxes
    (..., 2 or 4) in [0, 1]: delta plus the references' logits (on (x, y) only for points), sigmoid."""
    logits = inverse_sigmoid(reference, eps)
    if reference.shape[-1] == 4:
        return (delta + logits).sigmoid()
    return torch.cat([delta[..., :2] + logits, delta[..., 2:]], -1).sigmoid()


def at_least_fp32(t: Tensor) -> Tensor:
    """t in float32, or float64 if it already is (losses and coordinates under AMP are computed in fp32;
    a float64 model, e.g. the golden-value tests', keeps its precision)."""
    return t if t.dtype == torch.float64 else t.float()


def coordinate_dtype(t: Tensor) -> torch.dtype:
    """The dtype to compute positions and grids in next to tensor t: float64 for a float64 t, else float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32
