"""AugDETR's Hybrid Attention Encoder (HAE) layer.

A hybrid layer first runs dense multi-head self-attention over the tokens of one feature
level (by default the coarsest one the encoder gets: DINO-4scale's stride-64 map), then the
ordinary deformable self-attention over all levels, with that level's tokens replaced by
the densely attended ones as both query and value (the paper's P5' in Concat(P3, P4, P5')).
"""
from typing import Optional

import torch
from torch import Tensor, nn

from ..transformer_layers import DeformableEncoderLayer, with_pos


class HybridAttentionEncoderLayer(DeformableEncoderLayer):
    """Dense attention on one level, then DINO's deformable encoder layer on all levels.

    The deformable part keeps DINO's parameter names, so DINO weights load into it; the dense
    branch adds `dense_attn`, `dense_norm` and, with dense_ffn, its own FFN
    (`dense_linear1`, `dense_linear2`, `dense_norm2`) as the earlier reproduction had.
    """

    def __init__(self, d_model: int = 256, d_ffn: int = 1024, dropout: float = 0.1, activation: str = "relu",
                 n_levels: int = 4, n_heads: int = 8, n_points: int = 4, dense_level: int = -1,
                 dense_ffn: bool = False):
        super().__init__(d_model, d_ffn, dropout, activation, n_levels, n_heads, n_points)
        if not -n_levels <= dense_level < n_levels:
            raise ValueError(f"hae_dense_level={dense_level} is not a level index for {n_levels} levels")
        self.dense_level = dense_level % n_levels
        # torch's own attention (its parameter layout: in_proj_weight packs W_q, W_k, W_v); with
        # need_weights=False it runs on scaled_dot_product_attention
        self.dense_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.dense_dropout = nn.Dropout(dropout)
        self.dense_norm = nn.LayerNorm(d_model)
        self.dense_ffn = dense_ffn
        if dense_ffn:
            self.dense_linear1 = nn.Linear(d_model, d_ffn)
            self.dense_linear2 = nn.Linear(d_ffn, d_model)
            self.dense_ffn_dropout = nn.Dropout(dropout)
            self.dense_norm2 = nn.LayerNorm(d_model)

    def dense_branch(self, x: Tensor, pos: Tensor, mask: Optional[Tensor]) -> Tensor:
        """x, pos (B, T, C) for the tokens of the dense level -> (B, T, C). Post-norm residual;
        position (sine + level embedding) on queries and keys only, as in DETR."""
        qk = with_pos(x, pos)
        attended = self.dense_attn(qk, qk, x, key_padding_mask=mask, need_weights=False)[0]
        x = self.dense_norm(x + self.dense_dropout(attended))
        if self.dense_ffn:
            x2 = self.dense_linear2(self.dense_ffn_dropout(self.activation(self.dense_linear1(x))))
            x = self.dense_norm2(x + self.dense_ffn_dropout(x2))
        return x

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor, spatial_shapes: Tensor,
                level_start_index: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        """Same interface as DeformableEncoderLayer: src, pos (B, S, C) -> (B, S, C)."""
        h, w = spatial_shapes[self.dense_level].tolist()
        start = int(level_start_index[self.dense_level])
        end = start + h * w
        mask = None if key_padding_mask is None else key_padding_mask[:, start:end]
        dense = self.dense_branch(src[:, start:end], pos[:, start:end], mask)
        src = torch.cat([src[:, :start], dense, src[:, end:]], dim=1)
        return super().forward(src, pos, reference_points, spatial_shapes, level_start_index, key_padding_mask)
