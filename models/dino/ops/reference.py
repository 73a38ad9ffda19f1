"""The pure-PyTorch multi-scale deformable attention: the reference every kernel is checked against.

A leaf module (it imports nothing from this package), so the backend's self-check can import it
without a cycle. Shapes (N batch, S = sum of H_l*W_l value tokens, M heads, D channels per head,
Lq queries, L levels, P points per level):
    value               (N, S, M, D)
    spatial_shapes      (L, 2) int64, (H_l, W_l) per level
    level_start_index   (L,) int64, offset of each level in S
    sampling_locations  (N, Lq, M, L, P, 2), (x, y) normalised to [0, 1]
    attention_weights   (N, Lq, M, L, P), already softmaxed over L*P
    -> output           (N, Lq, M*D)
"""
import torch
import torch.nn.functional as F
from torch import Tensor


def ms_deform_attn_pytorch(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                           sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """Bilinear sampling with F.grid_sample, one call per level (zeros outside the map).

    grid_sample with align_corners=False puts pixel centres at (i + 0.5) / W, which is
    the convention of the compiled kernels (location * W - 0.5 in pixel units).
    """
    n, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    grids = 2 * sampling_locations - 1  # grid_sample wants [-1, 1]
    sampled = []
    for lvl in range(num_levels):
        # each level read from its start (levels may cover only part of S, as in the kernels); the sizes stay
        # 0-dim tensors (no .tolist()), so an ONNX trace keeps them as functions of the input size
        h, w, start = spatial_shapes[lvl, 0], spatial_shapes[lvl, 1], level_start_index[lvl]
        # (N, H*W, M, D) -> (N*M, D, H, W)
        value_l = value[:, start:start + h * w].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        grid_l = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False))
    # (N*M, D, Lq, L, P) weighted by (N*M, 1, Lq, L, P) and summed over L*P
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, num_levels * num_points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(n, m * d, lq).transpose(1, 2).contiguous()
