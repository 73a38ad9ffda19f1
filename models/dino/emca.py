"""AugDETR's Encoder-Mixing Cross-Attention (EMCA).

The decoder's cross-attention reads K encoder layers E_1..E_K instead of the last one:

    A = W_a q,  dr = W_p q,  w = sigmoid(W_e q)             (computed once per query)
    V_k = Samp(W_{v,k} E_k + b_k, r + dr)                    (one value projection per layer)
    EMCA(q) = W_o sum_k w_k * Softmax(A) V_k

Bilinear sampling and the attention-weighted sum are linear in the map and act per token,
so they commute with the per-token projection. Two exact formulations, picked per call by
`sample_first(S, Lq)`:

  project first  project all S tokens of the K maps (K*S*C*C multiply-adds), stack them on
                 the head axis (B, S, K*M, D) and sample them in one deformable-attention
                 call that shares the M heads' locations and Softmax(A) across the K maps.
  sample first   sample the raw maps, all C channels at each head's locations, folding the
                 heads into the query axis: (K*B, S, 1, C) read at (K*B, Lq*M, 1, L, P);
                 then project only what was sampled (K*Lq*C*C). The bias b_k is sampled
                 like a constant map, so it is scaled by beta = the attention-weighted sum
                 of in-bounds, unpadded corner weights: beta comes from a one-channel call
                 on the map of unpadded tokens (1 - mask). Padded tokens are zeroed in the
                 raw map, which makes their projection 0 as the project-first path's
                 masked_fill does.

Sample first costs 8x (= C/D) the sampling work but skips the projection of S tokens, so it
wins when the maps are large against the queries (see `SAMPLE_FIRST_MIN_TOKENS_PER_POINT`).

Sampling first needs the raw maps zero at padded tokens. The transformer zeroes them once
per forward (`EncoderMemories.stack`, in place on the stack) and hands the same maps to all
decoder layers; a plain tensor is zeroed by each call (a K-map copy per layer, kept for
backward: 6 x 135 MB at 800x1333 for K = 6).
"""
import math
from typing import NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .ops import MSDeformAttn, ms_deform_attn

# a level is sampled first when it has at least this many tokens per sampling point of one
# head on it (S_l >= ratio * Lq * P); see EncoderMixingAttention.sample_first_levels
SAMPLE_FIRST_MIN_TOKENS_PER_POINT = 1.0
FORMULATIONS = ("auto", "project_first", "sample_first")


class EncoderMemories(NamedTuple):
    """K stacked encoder outputs (K, B, S, C), zero at padded tokens; build it with `stack`."""
    maps: Tensor

    @staticmethod
    def stack(layer_outputs: Sequence[Tensor], padding_mask: Optional[Tensor]) -> "EncoderMemories":
        """layer_outputs: K tensors (B, S, C); padding_mask (B, S) True = padding."""
        maps = torch.stack(list(layer_outputs))
        if padding_mask is not None:  # in place on the new stack: no second copy
            maps.masked_fill_(padding_mask[None, :, :, None], 0.0)
        return EncoderMemories(maps)


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
        self.formulation = "auto"  # or one of FORMULATIONS, e.g. to compare them
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

    def value_projections(self):
        """Per-layer projection weights (K, C, C) and biases (K, C), in memory order."""
        if self.shared_value_proj:
            k = self.num_mixed
            return (self.value_proj.weight[None].expand(k, -1, -1), self.value_proj.bias[None].expand(k, -1))
        return (torch.cat([self.extra_value_proj_weight, self.value_proj.weight[None]]),
                torch.cat([self.extra_value_proj_bias, self.value_proj.bias[None]]))

    def project_values(self, memories: Tensor, padding_mask: Optional[Tensor]) -> Tensor:
        """memories (K, B, S, C) -> stacked values (B, S, K*M, D) in one batched projection."""
        if self.shared_value_proj:
            value = self.value_proj(memories).permute(1, 2, 0, 3)  # (B, S, K, C)
        else:
            weight, bias = self.value_projections()
            value = torch.einsum("kbsc,koc->bsko", memories, weight) + bias
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[:, :, None, None], 0.0)
        b, s = value.shape[:2]
        return value.reshape(b, s, self.num_mixed * self.n_heads, self.d_model // self.n_heads)

    def sample_first_levels(self, level_sizes, num_queries: int) -> int:
        """How many leading (finest) levels to sample first; the rest is projected first.

        Both are exact and the sum over levels splits, so the choice is per level: a level is
        sampled first when it has at least SAMPLE_FIRST_MIN_TOKENS_PER_POINT tokens per
        sampling point of one head on it (S_l >= ratio * Lq * P), i.e. when projecting its
        tokens costs more than gathering all C channels at its points. The leading run of such
        levels is taken, so that each formulation reads one contiguous token range.
        `formulation` forces one for all levels ("project_first" / "sample_first").
        """
        if self.formulation not in FORMULATIONS:
            raise ValueError(f"EncoderMixingAttention.formulation = {self.formulation!r}: use one of {FORMULATIONS}")
        if self.formulation != "auto":
            return len(level_sizes) if self.formulation == "sample_first" else 0
        n = 0
        while n < len(level_sizes) and level_sizes[n] >= SAMPLE_FIRST_MIN_TOKENS_PER_POINT * num_queries * self.n_points:
            n += 1
        return n

    def _project_then_sample(self, memories, padding_mask, spatial_shapes, level_start_index, locations, weights,
                             gates) -> Tensor:
        """-> gated sum over the K maps (B, Lq, C), before output_proj."""
        b, lq = gates.shape[:2]
        value = self.project_values(memories, padding_mask)
        # value head k*M + m reads location/weight head m: one call samples all K maps at the
        # same points (the op takes location heads that divide the value heads, no copies)
        out = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)
        return (out.view(b, lq, self.num_mixed, self.d_model) * gates[..., None]).sum(2)

    def _sample_then_project(self, memories, padding_mask, spatial_shapes, level_start_index, locations, weights,
                             gates) -> Tensor:
        """-> gated sum over the K maps (B, Lq, C), before output_proj; see the module docstring.

        memories (K, B, S, C) contiguous and zero at padded tokens; the levels sampled here
        lead the token axis and may cover only part of S (the op reads each level at its start)."""
        k, b, s, c = memories.shape
        lq, m = locations.shape[1], self.n_heads
        levels_points = locations.shape[3:5]
        if padding_mask is not None:
            unpadded = (~padding_mask).to(memories.dtype)[:, :, None, None]  # (B, S, 1, 1)
        else:
            unpadded = memories.new_ones(b, s, 1, 1)
        # heads folded into the queries: one location head reading all C channels
        loc = locations.reshape(b, lq * m, 1, *levels_points, 2)
        attn = weights.reshape(b, lq * m, 1, *levels_points)
        # the K maps folded into the batch (a view of the stack); locations repeated K times
        # (K*Lq*M*L*P*3 numbers, small next to the maps)
        sampled = ms_deform_attn(memories.view(k * b, s, 1, c), spatial_shapes, level_start_index,
                                 loc.repeat(k, 1, 1, 1, 1, 1), attn.repeat(k, 1, 1, 1, 1))  # (K*B, Lq*M, C)
        beta = ms_deform_attn(unpadded, spatial_shapes, level_start_index, loc, attn).view(b, lq, m, 1)
        weight, bias = self.value_projections()
        sampled = sampled.view(k, b, lq, m, c) * gates.permute(2, 0, 1)[..., None, None]
        if self.shared_value_proj:  # mix first, then one projection per head
            out = torch.einsum("bqmc,mdc->bqmd", sampled.sum(0), weight[0].view(m, c // m, c))
        else:  # per head m: contract over (k, c) in one matmul
            out = torch.einsum("kbqmc,kmdc->bqmd", sampled, weight.view(k, m, c // m, c))
        out = out + beta * (gates @ bias).view(b, lq, m, c // m)
        return out.reshape(b, lq, c)

    def forward(self, query: Tensor, reference_points: Tensor, input_flatten: Union[EncoderMemories, Tensor],
                input_spatial_shapes: Tensor, input_level_start_index: Tensor,
                input_padding_mask: Optional[Tensor] = None) -> Tensor:
        """query (B, Lq, C); input_flatten: EncoderMemories, or the K stacked encoder outputs
        (K, B, S, C) as a tensor (zeroed at padded tokens here, per call) -> (B, Lq, C)."""
        prepared = isinstance(input_flatten, EncoderMemories)
        memories = input_flatten.maps if prepared else input_flatten
        if memories.dim() != 4 or memories.shape[0] != self.num_mixed:
            raise ValueError(f"EMCA expects {self.num_mixed} stacked encoder outputs (K, B, S, C), "
                             f"got {tuple(memories.shape)}")
        locations, weights = self.sampling_locations_and_weights(query, reference_points, input_spatial_shapes)
        gates = self.mix_weights(query).sigmoid()  # (B, Lq, K)
        if self.record_mix_weights:
            self.last_mix_weights = gates.detach()
        sizes = (input_spatial_shapes[:, 0] * input_spatial_shapes[:, 1]).tolist()
        n_fine = self.sample_first_levels(sizes, query.shape[1])
        out = 0
        if n_fine:
            if not prepared and input_padding_mask is not None:
                memories = memories.masked_fill(input_padding_mask[None, :, :, None], 0.0)
            out = self._sample_then_project(memories.contiguous(), input_padding_mask, input_spatial_shapes[:n_fine],
                                            input_level_start_index[:n_fine], locations[:, :, :, :n_fine].contiguous(),
                                            weights[:, :, :, :n_fine].contiguous(), gates)
        if n_fine < len(sizes):
            t0 = sum(sizes[:n_fine])  # the coarse levels' tokens run to the end of S
            mask = None if input_padding_mask is None else input_padding_mask[:, t0:]
            out = out + self._project_then_sample(memories[:, :, t0:], mask, input_spatial_shapes[n_fine:],
                                                  input_level_start_index[n_fine:] - t0,
                                                  locations[:, :, :, n_fine:].contiguous(),
                                                  weights[:, :, :, n_fine:].contiguous(), gates)
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
