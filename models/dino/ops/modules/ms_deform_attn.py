"""The MSDeformAttn module: projections around the multi-scale deformable attention op."""
import math
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functions import ms_deform_attn


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Deformable DETR).

    Each query predicts, per head, `n_points` sampling offsets and weights on each of
    `n_levels` feature maps around its reference point, and sums the bilinearly
    sampled, projected values.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        head_dim = d_model // n_heads
        if head_dim & (head_dim - 1) != 0:
            warnings.warn(f"channels per head = {head_dim} is not a power of 2; the CUDA kernel is fastest with one")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Offsets start as a fixed pattern: head h looks in direction 2*pi*h/M, point p at
        # distance p+1 (in units of the level's pixel, or of the box half-size for 4-d refs).
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        for i in range(self.n_points):
            grid[:, :, i, :] *= i + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def sampling_locations_and_weights(self, query: Tensor, reference_points: Tensor, spatial_shapes: Tensor):
        """Where and how much each query samples.

        query (N, Lq, C); reference_points (N, Lq, L, 2) as (x, y) or (N, Lq, L, 4) as (cx, cy, w, h),
        all normalised to [0, 1]. Returns locations (N, Lq, M, L, P, 2) and softmaxed weights (N, Lq, M, L, P).
        """
        n, lq, _ = query.shape
        offsets = self.sampling_offsets(query).view(n, lq, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(n, lq, self.n_heads, self.n_levels * self.n_points)
        weights = F.softmax(weights, -1).view(n, lq, self.n_heads, self.n_levels, self.n_points)
        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: divide by (W_l, H_l)
            normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            # offsets are in units of half the box size, spread over the points
            locations = (reference_points[:, :, None, :, None, :2]
                         + offsets / self.n_points * reference_points[:, :, None, :, None, 2:] * 0.5)
        else:
            raise ValueError(f"reference_points must end in 2 or 4 values, got shape {tuple(reference_points.shape)}")
        return locations, weights

    def project_value(self, input_flatten: Tensor, input_padding_mask: Optional[Tensor]) -> Tensor:
        """(N, S, C) -> (N, S, M, C/M), with padded tokens zeroed."""
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        return value.view(value.shape[0], value.shape[1], self.n_heads, self.d_model // self.n_heads)

    def forward(self, query: Tensor, reference_points: Tensor, input_flatten: Tensor, input_spatial_shapes: Tensor,
                input_level_start_index: Tensor, input_padding_mask: Optional[Tensor] = None) -> Tensor:
        """query (N, Lq, C), input_flatten (N, S, C), input_padding_mask (N, S) True = padding -> (N, Lq, C)."""
        value = self.project_value(input_flatten, input_padding_mask)
        locations, weights = self.sampling_locations_and_weights(query, reference_points, input_spatial_shapes)
        out = ms_deform_attn(value, input_spatial_shapes, input_level_start_index, locations, weights)
        return self.output_proj(out)
