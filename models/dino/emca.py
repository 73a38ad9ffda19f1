"""AugDETR's Encoder-Mixing Cross-Attention (EMCA).

The decoder's cross-attention reads K encoder layers E_1..E_K instead of the last one:

    A = W_a q,  dr = W_p q,  w = sigmoid(W_e q)             (computed once per query)
    V_k = Samp(W_{v,k} E_k, r + dr)                          (one value projection per layer)
    EMCA(q) = W_o sum_k w_k * Softmax(A) V_k

Fused: the K projected value maps are stacked on the head axis, (B, S, K*M, D), and sampled
with one deformable-attention call that shares the M heads' locations and Softmax(A) across
the K maps; the K results are then weighted by w_k and summed. The value stack is a view of
one batched projection, so there is no per-layer op call and no copy of values or locations.
"""
import math
from typing import Optional

import torch
from torch import Tensor, nn

from .ops import MSDeformAttn, ms_deform_attn


class EncoderMixingAttention(MSDeformAttn):
    """MSDeformAttn over K stacked encoder layers, mixed by per-query sigmoid gates.

    Keeps MSDeformAttn's parameter names: `value_proj` projects the last mixed encoder layer
    (the one plain DINO reads), `extra_value_proj_weight/bias` (K-1, C, C)/(K-1, C) the
    others, in order; `mix_weights` is W_e (C -> K). With shared_value_proj every layer uses
    `value_proj`.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4,
                 num_mixed: int = 6, shared_value_proj: bool = False):
        self.num_mixed = num_mixed
        self.shared_value_proj = shared_value_proj or num_mixed == 1
        super().__init__(d_model, n_levels, n_heads, n_points)  # calls _reset_parameters
        self.record_mix_weights = False
        self.last_mix_weights: Optional[Tensor] = None
        self.register_load_state_dict_post_hook(_init_missing_value_projs)

    def _reset_parameters(self) -> None:
        if not hasattr(self, "mix_weights"):
            self.mix_weights = nn.Linear(self.d_model, self.num_mixed)
            if not self.shared_value_proj:
                n_extra = self.num_mixed - 1
                self.extra_value_proj_weight = nn.Parameter(torch.empty(n_extra, self.d_model, self.d_model))
                self.extra_value_proj_bias = nn.Parameter(torch.empty(n_extra, self.d_model))
        super()._reset_parameters()
        self.copy_value_proj_to_extras()
        # Gates start at 1/K each (weight 0, bias logit(1/K)), so sum_k w_k = 1: at
        # initialisation the output is the mean of K equally projected samples and has the
        # scale of plain DINO's cross-attention, instead of K/2 times it (sigmoid(0) = 0.5 each).
        # With K = 1 the gate cannot reach 1; it starts at sigmoid(4.6) ~= 0.99.
        nn.init.constant_(self.mix_weights.weight, 0.0)
        p = 1.0 / self.num_mixed
        nn.init.constant_(self.mix_weights.bias, math.log(p / (1 - p)) if self.num_mixed > 1 else 4.6)

    @torch.no_grad()
    def copy_value_proj_to_extras(self) -> None:
        """Start every per-layer value projection from `value_proj` (e.g. DINO's trained one)."""
        if not self.shared_value_proj:
            self.extra_value_proj_weight.copy_(self.value_proj.weight.expand_as(self.extra_value_proj_weight))
            self.extra_value_proj_bias.copy_(self.value_proj.bias.expand_as(self.extra_value_proj_bias))

    def project_values(self, memories: Tensor, padding_mask: Optional[Tensor]) -> Tensor:
        """memories (K, B, S, C) -> stacked values (B, S, K*M, D) in one batched projection."""
        if self.shared_value_proj:
            value = self.value_proj(memories).permute(1, 2, 0, 3)  # (B, S, K, C)
        else:
            weight = torch.cat([self.extra_value_proj_weight, self.value_proj.weight[None]])  # (K, C, C)
            bias = torch.cat([self.extra_value_proj_bias, self.value_proj.bias[None]])  # (K, C)
            value = torch.einsum("kbsc,koc->bsko", memories, weight) + bias
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[:, :, None, None], 0.0)
        b, s = value.shape[:2]
        return value.reshape(b, s, self.num_mixed * self.n_heads, self.d_model // self.n_heads)

    def forward(self, query: Tensor, reference_points: Tensor, input_flatten: Tensor, input_spatial_shapes: Tensor,
                input_level_start_index: Tensor, input_padding_mask: Optional[Tensor] = None) -> Tensor:
        """query (B, Lq, C); input_flatten: K stacked encoder outputs (K, B, S, C) -> (B, Lq, C)."""
        if input_flatten.dim() != 4 or input_flatten.shape[0] != self.num_mixed:
            raise ValueError(f"EMCA expects {self.num_mixed} stacked encoder outputs (K, B, S, C), "
                             f"got {tuple(input_flatten.shape)}")
        b, lq, _ = query.shape
        k = self.num_mixed
        value = self.project_values(input_flatten, input_padding_mask)
        locations, weights = self.sampling_locations_and_weights(query, reference_points, input_spatial_shapes)
        gates = self.mix_weights(query).sigmoid()  # (B, Lq, K)
        if self.record_mix_weights:
            self.last_mix_weights = gates.detach()
        # value head k*M + m reads location/weight head m: one call samples all K maps at the
        # same points (the op takes location heads that divide the value heads, no copies)
        out = ms_deform_attn(value, input_spatial_shapes, input_level_start_index, locations, weights)
        out = (out.view(b, lq, k, self.d_model) * gates[..., None]).sum(2)  # (B, Lq, C)
        return self.output_proj(out)


def _init_missing_value_projs(module: EncoderMixingAttention, incompatible_keys) -> None:
    """Loading a DINO checkpoint (no per-layer projections): start them from its value_proj.
    They are still reported as missing keys."""
    if module.shared_value_proj:
        return
    missing = set(incompatible_keys.missing_keys)
    names = [k for k in missing if k.endswith("extra_value_proj_weight") or k.endswith("extra_value_proj_bias")]
    if names and not any(k.endswith("value_proj.weight") and "extra" not in k for k in missing):
        module.copy_value_proj_to_extras()
