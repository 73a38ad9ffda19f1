"""DETR's transformer: dense self-attention over one feature map, a decoder of learned queries.

All tensors are batch-first: the flattened feature map (B, S, C) with S = H * W, queries (B, Q, C).
The attention is torch's nn.MultiheadAttention and the parameter names are the official ones
(facebookresearch/detr), so its checkpoints load as they are. Two differences from the deformable
family's layers (models/dino/transformer_layers.py) matter when reading checkpoints: DETR's decoder layer
calls the norm after self-attention norm1 and the one after cross-attention norm2 (the reverse of DINO's
and Deformable DETR's), and its decoder's final norm is applied to every layer's output.
"""
from typing import Callable, List, Optional

import torch
from torch import Tensor, nn

from ..common.layers import get_activation_fn


class ResidualLayer(nn.Module):
    """What DETR's encoder and decoder layers share: residual branches with post-norm (each branch's sum is
    normalised, DETR's released models) or pre-norm (each branch reads normalised input), and the FFN.
    A subclass creates its attention modules, then calls add_ffn, so its parameters are registered in the
    official order (attention, linear1, linear2, norms)."""

    def add_ffn(self, d_model: int, dim_feedforward: int, dropout: float, activation: str, num_norms: int,
                normalize_before: bool) -> None:
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        for i in range(1, num_norms + 1):
            setattr(self, f"norm{i}", nn.LayerNorm(d_model))
            setattr(self, f"dropout{i}", nn.Dropout(dropout))
        self.activation = get_activation_fn(activation)
        self.normalize_before = normalize_before

    def residual(self, x: Tensor, norm: nn.LayerNorm, dropout: nn.Dropout, branch: Callable[[Tensor], Tensor]
                 ) -> Tensor:
        """x + branch, normalised after the sum (post-norm) or with the branch reading norm(x) (pre-norm)."""
        if self.normalize_before:
            return x + dropout(branch(norm(x)))
        return norm(x + dropout(branch(x)))

    def ffn(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(self.activation(self.linear1(x))))


class DETREncoderLayer(ResidualLayer):
    """Self-attention over the feature map (position added to queries and keys), then the FFN."""

    def __init__(self, d_model: int = 256, nhead: int = 8, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str = "relu", normalize_before: bool = False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.add_ffn(d_model, dim_feedforward, dropout, activation, 2, normalize_before)

    def forward(self, src: Tensor, pos: Tensor, padding_mask: Tensor) -> Tensor:
        """src, pos (B, S, C); padding_mask (B, S) True = padding -> (B, S, C)."""
        def attend(x: Tensor) -> Tensor:
            return self.self_attn(x + pos, x + pos, x, key_padding_mask=padding_mask, need_weights=False)[0]

        src = self.residual(src, self.norm1, self.dropout1, attend)
        return self.residual(src, self.norm2, self.dropout2, self.ffn)


class DETRDecoderLayer(ResidualLayer):
    """Self-attention among the queries, cross-attention to the encoder memory, the FFN; norm1, norm2 and
    norm3 follow them in that order."""

    def __init__(self, d_model: int = 256, nhead: int = 8, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str = "relu", normalize_before: bool = False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.add_ffn(d_model, dim_feedforward, dropout, activation, 3, normalize_before)

    def forward(self, tgt: Tensor, query_pos: Tensor, memory: Tensor, pos: Tensor, padding_mask: Tensor) -> Tensor:
        """tgt, query_pos (B, Q, C); memory, pos (B, S, C); padding_mask (B, S) True = padding -> (B, Q, C)."""
        def self_attend(x: Tensor) -> Tensor:
            return self.self_attn(x + query_pos, x + query_pos, x, need_weights=False)[0]

        def cross_attend(x: Tensor) -> Tensor:
            return self.multihead_attn(x + query_pos, memory + pos, memory, key_padding_mask=padding_mask,
                                       need_weights=False)[0]

        tgt = self.residual(tgt, self.norm1, self.dropout1, self_attend)
        tgt = self.residual(tgt, self.norm2, self.dropout2, cross_attend)
        return self.residual(tgt, self.norm3, self.dropout3, self.ffn)


class DETREncoder(nn.Module):
    """A stack of encoder layers; `norm` (pre-norm models only) normalises the last output."""

    def __init__(self, layers: List[DETREncoderLayer], norm: Optional[nn.LayerNorm] = None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm

    def forward(self, src: Tensor, pos: Tensor, padding_mask: Tensor) -> Tensor:
        for layer in self.layers:
            src = layer(src, pos, padding_mask)
        return src if self.norm is None else self.norm(src)


class DETRDecoder(nn.Module):
    """A stack of decoder layers; every layer's output goes through the final norm for its predictions,
    while the next layer reads the unnormalised one."""

    def __init__(self, layers: List[DETRDecoderLayer], d_model: int):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt: Tensor, query_pos: Tensor, memory: Tensor, pos: Tensor, padding_mask: Tensor) -> Tensor:
        """-> (L, B, Q, C): the normalised output of each of the L layers."""
        outputs = []
        for layer in self.layers:
            tgt = layer(tgt, query_pos, memory, pos, padding_mask)
            outputs.append(self.norm(tgt))
        return torch.stack(outputs)


class DETRTransformer(nn.Module):
    """Encoder over one feature map, decoder from zero content queries with learned positional queries.
    Its matrices start Xavier-uniform, as DETR trains them."""

    def __init__(self, encoder: DETREncoder, decoder: DETRDecoder, d_model: int):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.d_model = d_model
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: Tensor, mask: Tensor, query_embed: Tensor, pos: Tensor) -> Tensor:
        """src, pos (B, C, H, W); mask (B, H, W) True = padding; query_embed (Q, C) -> (L, B, Q, C)."""
        src = src.flatten(2).transpose(1, 2)
        pos = pos.flatten(2).transpose(1, 2)
        mask = mask.flatten(1)
        query_pos = query_embed.unsqueeze(0).expand(src.shape[0], -1, -1)
        memory = self.encoder(src, pos, mask)
        return self.decoder(torch.zeros_like(query_pos), query_pos, memory, pos, mask)
