"""AugDETR's Encoder-Mixing Cross-Attention (EMCA).

The decoder's cross-attention reads K encoder layers E_1..E_K instead of the last one:

    A = W_a q,  dr = W_p q,  w = sigmoid(W_e q)             (computed once per query)
    V_k = Samp(W_{v,k} E_k + b_k, r + dr)                    (one value projection per layer)
    EMCA(q) = W_o sum_k w_k * Softmax(A) V_k

Bilinear sampling and the attention-weighted sum are linear in the map and act per token,
so they commute with the per-token projection. The gate w_k is a per-query scalar, so it
rides in the sampling op's weights: map k is read with w_k * Softmax(A) (and the gates'
gradient comes out of the op's weight gradient). The K maps are folded into the op's batch
axis (K*B), so the stack is read in place. Two exact formulations, picked per level by
`sample_first_levels(S_l, Lq)`:

  project first  project the level's tokens of the K maps without bias ((K, B, S', C) @ W_k^T,
                 K*S'*C*C multiply-adds) and sample them as K*B images of M heads.
  sample first   sample the raw maps, all C channels at each head's locations, folding the
                 heads into the query axis head-major: (K*B, S, 1, C) read at (K*B, M*Lq, 1,
                 L, P), so that head m of map k is one (Lq, C) matrix; then project only
                 what was sampled (K*M matmuls (Lq, C) @ (C, D)).

The bias b_k, sampled like a constant map, is scaled by beta = the attention-weighted sum
of in-bounds, unpadded corner weights; beta comes from one one-channel call on the map of
unpadded tokens (1 - mask) and serves both formulations. Padded tokens are zero in the raw
maps, so their projection (without bias) is 0 as in DINO's masked value.

Sample first costs 8x (= C/D) the sampling work but skips the projection of S tokens, so it
wins when the maps are large against the queries (see `SAMPLE_FIRST_MIN_TOKENS_PER_POINT`).

The earlier reproduction's variants (config keys, parts.py): gate_input='content' reads the
gates from the content query alone (the decoder layer hands it in as `content`, see
`reads_content`); output_proj='per_layer' projects each layer's sample before gating,
sum_k w_k (W_o x_k + b_o) = W_o sum_k w_k x_k + (sum_k w_k) b_o, i.e. the bias scaled by the
gate sum; gate_init='xavier' starts the gates near 0.5 each.

Both need the raw maps zero at padded tokens. The transformer zeroes them once
per forward (`EncoderMemories.stack`, in place on the stack) and hands the same maps to all
decoder layers; a plain tensor is zeroed by each call (a K-map copy per layer, kept for
backward: 6 x 135 MB at 800x1333 for K = 6).
"""
import math
from typing import NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..ops import MSDeformAttn, ms_deform_attn

# a level is sampled first when it has at least this many tokens per sampling point of one
# head on it (S_l >= ratio * Lq * P); see EncoderMixingAttention.sample_first_levels
SAMPLE_FIRST_MIN_TOKENS_PER_POINT = 1.0
FORMULATIONS = ("auto", "project_first", "sample_first")
GATE_INPUTS = ("content_pos", "content")
OUTPUT_PROJS = ("mixed", "per_layer")
GATE_INITS = ("mean", "xavier")


class EncoderMemories(NamedTuple):
    """K stacked encoder outputs, zero at padded tokens, as two token ranges: `fine` (K, B, S_f, C)
    holds the first S_f tokens (the levels EMCA samples first), `coarse` (K, B, S - S_f, C) the
    rest. Build it with `stack`; each part is contiguous, so the decoder layers read them in
    place and their gradients add up per part instead of in K full-size maps per layer."""
    fine: Tensor
    coarse: Tensor

    @staticmethod
    def stack(layer_outputs: Sequence[Tensor], padding_mask: Optional[Tensor],
              fine_tokens: int = 0) -> "EncoderMemories":
        """layer_outputs: K tensors (B, S, C); padding_mask (B, S) True = padding; fine_tokens S_f
        (EncoderMixingAttention.fine_tokens gives the one its calls will use)."""
        s = layer_outputs[0].shape[1]
        if not 0 <= fine_tokens <= s:
            raise ValueError(f"EncoderMemories.stack: fine_tokens={fine_tokens} outside [0, {s}]")
        sizes = [fine_tokens, s - fine_tokens]
        pieces = [out.split(sizes, dim=1) for out in layer_outputs]
        parts = [torch.stack([p[i] for p in pieces]) for i in range(2)]
        for part, mask in zip(parts, (None, None) if padding_mask is None else padding_mask.split(sizes, dim=1)):
            if mask is not None:  # in place on the new stack: no second copy
                part.masked_fill_(mask[None, :, :, None], 0.0)
        return EncoderMemories(*parts)

    @property
    def maps(self) -> Tensor:
        """All tokens (K, B, S, C), a copy."""
        return torch.cat([self.fine, self.coarse], dim=2)


class EncoderMixingAttention(MSDeformAttn):
    """MSDeformAttn over K stacked encoder layers, mixed by per-query sigmoid gates.

    Keeps MSDeformAttn's parameter names: `value_proj` projects the last mixed encoder layer
    (the one plain DINO reads), `extra_value_proj_weight/bias` (K-1, C, C)/(K-1, C) the
    others, in order; `mix_weights` is W_e (C -> K). With shared_value_proj every layer uses
    `value_proj`.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4,
                 num_mixed: int = 6, shared_value_proj: bool = False, gate_input: str = "content_pos",
                 output_proj: str = "mixed", gate_init: str = "mean"):
        for name, value, allowed in (("gate_input", gate_input, GATE_INPUTS), ("output_proj", output_proj,
                                      OUTPUT_PROJS), ("gate_init", gate_init, GATE_INITS)):
            if value not in allowed:
                raise ValueError(f"EncoderMixingAttention {name}={value!r}: use one of {allowed}")
        self.num_mixed = num_mixed
        self.shared_value_proj = shared_value_proj or num_mixed == 1
        self.gate_input = gate_input
        self.output_proj_per_layer = output_proj == "per_layer"
        self.gate_init = gate_init
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
        if self.gate_init == "xavier":
            # the earlier reproduction's: the transformer's Xavier-uniform weight and nn.Linear's default
            # bias U(+-1/sqrt(C)), so every gate starts near sigmoid(0) = 0.5
            nn.init.xavier_uniform_(self.mix_weights.weight)
            bound = 1.0 / math.sqrt(self.d_model)
            nn.init.uniform_(self.mix_weights.bias, -bound, bound)
            return
        # Gates start at 1/K each (weight 0, bias logit(1/K)), so sum_k w_k = 1: at
        # initialisation the output is the mean of K equally projected samples and has the
        # scale of plain DINO's cross-attention, instead of K/2 times it (sigmoid(0) = 0.5 each).
        # With K = 1 the gate cannot reach 1; it starts at sigmoid(4.6) ~= 0.99.
        nn.init.constant_(self.mix_weights.weight, 0.0)
        p = 1.0 / self.num_mixed
        nn.init.constant_(self.mix_weights.bias, math.log(p / (1 - p)) if self.num_mixed > 1 else 4.6)

    @property
    def reads_content(self) -> bool:
        """True when forward needs the content query (`content`) besides the query: the decoder layer
        then hands it in."""
        return self.gate_input == "content"

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
        n, min_tokens = 0, SAMPLE_FIRST_MIN_TOKENS_PER_POINT * num_queries * self.n_points
        while n < len(level_sizes) and level_sizes[n] >= min_tokens:
            n += 1
        return n

    def _fine_split(self, spatial_shapes, num_queries: int):
        """(levels sampled first, their tokens) for (H_l, W_l) pairs and num_queries queries."""
        sizes = [int(h) * int(w) for h, w in spatial_shapes]
        n_fine = self.sample_first_levels(sizes, num_queries)
        return n_fine, sum(sizes[:n_fine])

    def fine_tokens(self, spatial_shapes, num_queries: int) -> int:
        """Tokens of the levels sampled first for num_queries queries: the split for EncoderMemories."""
        return self._fine_split(spatial_shapes, num_queries)[1]

    def _project_then_sample(self, memories: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                             locations: Tensor, gated_weights: Tensor) -> Tensor:
        """memories (K, B, S', C), zero at padded tokens; locations (K*B, Lq, M, L', P, 2) and
        gated_weights (K*B, Lq, M, L', P), map k-major -> gated sum over the maps (B, Lq, M, D),
        without the bias (the caller adds it, scaled by beta)."""
        k, b, s, c = memories.shape
        weight, _ = self.value_projections()
        # (K, B, S', C) @ (K, 1, C, C): K*B matrices, read in place
        value = torch.matmul(memories, weight[:, None].transpose(-1, -2))
        out = ms_deform_attn(value.view(k * b, s, self.n_heads, c // self.n_heads), spatial_shapes,
                             level_start_index, locations, gated_weights)  # (K*B, Lq, C)
        return out.view(k, b, -1, self.n_heads, c // self.n_heads).sum(0)

    def _sample_then_project(self, memories: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                             locations: Tensor, gated_weights: Tensor) -> Tensor:
        """memories (K, B, S_f, C) contiguous (EncoderMemories.fine), zero at padded tokens: the
        levels sampled here lead the token axis.
        locations (K*B, M*Lq, 1, L', P, 2) and gated_weights (K*B, M*Lq, 1, L', P): the heads
        folded into the queries head-major, so that what head m of map k sampled is one
        contiguous (Lq, C) matrix -> gated sum over the maps (B, M, Lq, D), without the bias."""
        k, b, s, c = memories.shape
        m = self.n_heads
        sampled = ms_deform_attn(memories.view(k * b, s, 1, c), spatial_shapes, level_start_index, locations,
                                 gated_weights).view(k, b, m, -1, c)  # all C channels at each head's points
        weight, _ = self.value_projections()
        head_weight = weight.view(k, 1, m, c // m, c).transpose(-1, -2)  # (K, 1, M, C, D): head m's rows of W_k
        if self.shared_value_proj:  # the gates are in the samples: mix first, then one projection
            return torch.matmul(sampled.sum(0), head_weight[0])
        return torch.matmul(sampled, head_weight).sum(0)  # (K*B*M) matmuls (Lq, C) @ (C, D)

    def _scaled_bias(self, gates: Tensor, heads_first: Tensor, weights: Tensor, unpadded: Tensor,
                     spatial_shapes: Tensor, level_start_index: Tensor) -> Tensor:
        """The biases b_k, mixed by the gates, of the projected maps: each is sampled like a constant
        map, i.e. scaled by beta, the attention-weighted sum of in-bounds, unpadded corner weights
        (one one-channel call on unpadded (B, S, 1, 1), 1 at real tokens) -> (B, Lq, M, D).
        heads_first (B, M*Lq, 1, L, P, 2): the locations, heads folded into the queries head-major."""
        b, lq, m, *levels_points = weights.shape
        beta = ms_deform_attn(unpadded, spatial_shapes, level_start_index, heads_first,
                              weights.transpose(1, 2).reshape(b, m * lq, 1, *levels_points))
        bias = (gates @ self.value_projections()[1]).view(b, lq, m, -1)
        return beta.view(b, m, lq, 1).transpose(1, 2) * bias

    def _split_memories(self, memories: Union[EncoderMemories, Tensor], padding_mask: Optional[Tensor],
                        fine_tokens: int):
        """-> (fine (K, B, S_f, C) contiguous, coarse (K, B, S - S_f, C)), zero at padded tokens."""
        if isinstance(memories, EncoderMemories):
            if memories.fine.shape[2] == fine_tokens:
                return memories.fine, memories.coarse
            memories = memories.maps  # stacked for another split (e.g. another query count): a copy
        elif memories.dim() != 4 or memories.shape[0] != self.num_mixed:
            raise ValueError(f"EMCA expects {self.num_mixed} stacked encoder outputs (K, B, S, C), "
                             f"got {tuple(memories.shape)}")
        elif padding_mask is not None:  # a plain tensor is zeroed per call
            memories = memories.masked_fill(padding_mask[None, :, :, None], 0.0)
        return memories[:, :, :fine_tokens].contiguous(), memories[:, :, fine_tokens:]

    def gates(self, query: Tensor, content: Optional[Tensor] = None) -> Tensor:
        """The mixing gates (B, Lq, K) of query (B, Lq, C), or of its content part with gate_input='content'."""
        if self.reads_content:
            if content is None:
                raise ValueError("EMCA with gate_input='content' needs the content query: pass content=tgt")
            query = content
        return self.mix_weights(query).sigmoid()

    def forward(self, query: Tensor, reference_points: Tensor, input_flatten: Union[EncoderMemories, Tensor],
                input_spatial_shapes: Tensor, input_level_start_index: Tensor,
                input_padding_mask: Optional[Tensor] = None, content: Optional[Tensor] = None) -> Tensor:
        """query (B, Lq, C) (content + position); input_flatten: EncoderMemories, or the K stacked encoder
        outputs (K, B, S, C) as a tensor (zeroed at padded tokens here, per call); content (B, Lq, C): the
        content query alone, read by the gates with gate_input='content' -> (B, Lq, C)."""
        n_fine, fine_tokens = self._fine_split(input_spatial_shapes.tolist(), query.shape[1])
        fine, coarse = self._split_memories(input_flatten, input_padding_mask, fine_tokens)
        k, b, t0, c = fine.shape
        s, m, lq = t0 + coarse.shape[2], self.n_heads, query.shape[1]
        locations, weights = self.sampling_locations_and_weights(query, reference_points, input_spatial_shapes)
        gates = self.gates(query, content)  # (B, Lq, K)
        if self.record_mix_weights:
            self.last_mix_weights = gates.detach()
        # map k is read with weights w_k * Softmax(A): the gates ride in the sampling op, and
        # their gradient comes out of its weight gradient
        gated = weights[None] * gates.permute(2, 0, 1)[:, :, :, None, None, None]  # (K, B, Lq, M, L, P)
        heads_first = locations.transpose(1, 2).reshape(b, m * lq, 1, *locations.shape[3:])  # (B, M*Lq, 1, L, P, 2)
        unpadded = fine.new_ones(b, s, 1, 1) if input_padding_mask is None else \
            (~input_padding_mask).to(fine.dtype)[:, :, None, None]
        out = self._scaled_bias(gates, heads_first, weights, unpadded, input_spatial_shapes, input_level_start_index)
        if n_fine:
            fine_loc = heads_first[:, :, :, :n_fine]
            fine_weights = gated[:, :, :, :, :n_fine].transpose(2, 3).reshape(k * b, m * lq, 1, *fine_loc.shape[3:5])
            sampled = self._sample_then_project(fine, input_spatial_shapes[:n_fine], input_level_start_index[:n_fine],
                                                fine_loc[None].expand(k, *fine_loc.shape).flatten(0, 1), fine_weights)
            out = out + sampled.transpose(1, 2)
        if n_fine < len(input_spatial_shapes):
            coarse_loc = locations[:, :, :, n_fine:]
            out = out + self._project_then_sample(coarse, input_spatial_shapes[n_fine:],
                                                  input_level_start_index[n_fine:] - t0,
                                                  coarse_loc[None].expand(k, *coarse_loc.shape).flatten(0, 1),
                                                  gated[:, :, :, :, n_fine:].flatten(0, 1))
        out = self.output_proj(out.reshape(b, lq, c))
        if self.output_proj_per_layer:  # sum_k w_k (W_o x_k + b_o): the bias once more per unit of gate sum
            out = out + (gates.sum(-1, keepdim=True) - 1.0) * self.output_proj.bias
        return out


def _init_missing_value_projs(module: EncoderMixingAttention, incompatible_keys) -> None:
    """Loading a DINO checkpoint (no per-layer projections): start them from its value_proj.
    They are still reported as missing keys."""
    if module.shared_value_proj:
        return
    missing = set(incompatible_keys.missing_keys)
    names = [k for k in missing if k.endswith("extra_value_proj_weight") or k.endswith("extra_value_proj_bias")]
    if names and not any(k.endswith("value_proj.weight") and "extra" not in k for k in missing):
        module.copy_value_proj_to_extras()
