"""DINO's encoder and decoder layers and stacks (post-norm, deformable attention).

All tensors are batch-first: queries (B, Q, C), flattened multi-scale memory (B, S, C)
with S = sum of H_l * W_l.
"""
from typing import Callable, List, Optional

import torch
from torch import Tensor, nn

from ..common.layers import MLP, gen_sineembed_for_position, get_activation_fn, refine_boxes
from .ops import MSDeformAttn

# decoder hook: (layer index, layer output (B, Q, C), refined boxes (B, Q, 4)) -> next layer's mask or None
MaskUpdate = Callable[[int, Tensor, Tensor], Optional[Tensor]]


def with_pos(x: Tensor, pos: Optional[Tensor]) -> Tensor:
    return x if pos is None else x + pos


class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention over all levels, then a feed-forward block (post-norm)."""

    def __init__(self, d_model: int = 256, d_ffn: int = 1024, dropout: float = 0.1, activation: str = "relu",
                 n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.activation = get_activation_fn(activation)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward_ffn(self, src: Tensor) -> Tensor:
        src2 = self.linear2(self.dropout2(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout3(src2))

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor, spatial_shapes: Tensor,
                level_start_index: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        """src, pos (B, S, C); reference_points (B, S, L, 2) -> (B, S, C)."""
        src2 = self.self_attn(with_pos(src, pos), reference_points, src, spatial_shapes, level_start_index,
                              key_padding_mask)
        src = self.norm1(src + self.dropout1(src2))
        return self.forward_ffn(src)


class DeformableEncoder(nn.Module):
    """A stack of encoder layers. With keep_layer_outputs it also returns every layer's output
    (AugDETR's EMCA reads them); otherwise only the last one is kept."""

    def __init__(self, layers: List[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.num_layers = len(layers)

    @staticmethod
    def get_reference_points(spatial_shapes: List, valid_ratios: Tensor, device) -> Tensor:
        """Pixel centres of every level, normalised by the valid image size.

        valid_ratios (B, L, 2) as (w, h) -> (B, S, L, 2): each token's point seen on every level.
        """
        refs = []
        for lvl, (h, w) in enumerate(spatial_shapes):
            # pixel centres 0.5, 1.5, ...: arange, not linspace, whose ONNX export divides by (steps - 1) and
            # gives NaN on a one-pixel-high or -wide map
            ref_y, ref_x = torch.meshgrid(torch.arange(h, dtype=valid_ratios.dtype, device=device) + 0.5,
                                          torch.arange(w, dtype=valid_ratios.dtype, device=device) + 0.5,
                                          indexing="ij")
            ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
            ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
            refs.append(torch.stack((ref_x, ref_y), -1))
        reference_points = torch.cat(refs, 1)
        return reference_points[:, :, None] * valid_ratios[:, None]

    def forward(self, src: Tensor, pos: Tensor, spatial_shapes: Tensor, spatial_shapes_list: List,
                level_start_index: Tensor, valid_ratios: Tensor, key_padding_mask: Optional[Tensor] = None,
                keep_layer_outputs: bool = False):
        """src, pos (B, S, C) -> (memory (B, S, C), list of per-layer outputs or None)."""
        reference_points = self.get_reference_points(spatial_shapes_list, valid_ratios, src.device)
        outputs = [] if keep_layer_outputs else None
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, level_start_index, key_padding_mask)
            if keep_layer_outputs:
                outputs.append(src)
        return src, outputs


class DeformableDecoderLayer(nn.Module):
    """Self-attention (with the denoising mask), deformable cross-attention, FFN; post-norm each.

    Names follow DINO's checkpoints: norm2 after self-attention, norm1 after cross-attention,
    norm3 after the FFN. `cross_attn` may be replaced by AugDETR's EMCA module.
    """

    def __init__(self, d_model: int = 256, d_ffn: int = 1024, dropout: float = 0.1, activation: str = "relu",
                 n_levels: int = 4, n_heads: int = 8, n_points: int = 4, cross_attn: Optional[nn.Module] = None):
        super().__init__()
        self.cross_attn = cross_attn if cross_attn is not None else MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.activation = get_activation_fn(activation)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt: Tensor, query_pos: Tensor, reference_points: Tensor, memory, memory_padding_mask: Tensor,
                level_start_index: Tensor, spatial_shapes: Tensor, self_attn_mask: Optional[Tensor] = None) -> Tensor:
        """tgt, query_pos (B, Q, C); reference_points (B, Q, L, 2 or 4); memory (B, S, C) (or what
        `cross_attn` takes); self_attn_mask (Q, Q) or (B * heads, Q, Q) bool, True = blocked -> (B, Q, C)."""
        q = k = with_pos(tgt, query_pos)
        tgt2 = self.self_attn(q, k, tgt, attn_mask=self_attn_mask, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        # a cross-attention that also reads the content query alone (EMCA's gates, one variant) says so
        content = {"content": tgt} if getattr(self.cross_attn, "reads_content", False) else {}
        tgt2 = self.cross_attn(with_pos(tgt, query_pos), reference_points, memory, spatial_shapes,
                               level_start_index, memory_padding_mask, **content)
        tgt = self.norm1(tgt + self.dropout1(tgt2))
        tgt2 = self.linear2(self.dropout3(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(tgt2))


class DeformableDecoder(nn.Module):
    """The decoder stack, with iterative box refinement and DINO's "look forward twice".

    box_heads (one per layer, possibly one shared module) refine the reference boxes after each layer;
    the next layer gets the detached box. With look_forward_twice the returned boxes keep the undetached
    one, so that layer i's loss also trains layer i-1's prediction (DINO); otherwise they are the
    detached ones. class_heads are held for the checkpoint layout (DINO saves them as
    transformer.decoder.class_embed) and for mask updates that score queries between layers.
    Without position_from_boxes the caller gives a static positional query (Deformable DETR); with it
    the query position is ref_point_head(sine(box)) at every layer (DINO).
    """

    def __init__(self, layers: List[nn.Module], d_model: int, box_heads: Optional[nn.ModuleList] = None,
                 class_heads: Optional[nn.ModuleList] = None, query_dim: int = 4, final_norm: bool = True,
                 look_forward_twice: bool = True, position_from_boxes: bool = True, logit_eps: float = 1e-3):
        super().__init__()
        if query_dim not in (2, 4):
            raise ValueError("query_dim must be 2 (points x, y) or 4 (boxes cx, cy, w, h)")
        self.layers = nn.ModuleList(layers)
        self.num_layers = len(layers)
        self.norm = nn.LayerNorm(d_model) if final_norm else None
        self.ref_point_head = MLP(query_dim // 2 * d_model, d_model, d_model, 2) if position_from_boxes else None
        self.d_model = d_model
        self.look_forward_twice = look_forward_twice
        self.logit_eps = logit_eps  # inverse_sigmoid's clamp: DINO 1e-3, Deformable DETR 1e-5
        for name, heads in (("bbox_embed", box_heads), ("class_embed", class_heads)):
            if heads is not None and len(heads) < self.num_layers:
                raise ValueError(f"{name}: {len(heads)} heads for {self.num_layers} decoder layers")
        self.bbox_embed = box_heads
        self.class_embed = class_heads

    def head_modules(self) -> List[nn.Module]:
        """The prediction heads it holds (initialised by their owner, not as the decoder's layers)."""
        return [heads for heads in (self.bbox_embed, self.class_embed) if heads is not None]

    def forward(self, tgt: Tensor, memory, memory_padding_mask: Tensor, refpoints_unsigmoid: Tensor,
                level_start_index: Tensor, spatial_shapes: Tensor, valid_ratios: Tensor,
                self_attn_mask: Optional[Tensor] = None, mask_update: Optional[MaskUpdate] = None,
                query_pos: Optional[Tensor] = None):
        """tgt (B, Q, C), refpoints_unsigmoid (B, Q, 2 or 4) logits; self_attn_mask (Q, Q) or (B * heads, Q, Q)
        bool, True = blocked; mask_update(layer index, layer output (B, Q, C), its refined boxes (B, Q, 4)) ->
        the mask of the next layer (or None to keep it); query_pos (B, Q, C) without position_from_boxes ->
        (list of num_layers outputs (B, Q, C), list of num_layers + 1 boxes (B, Q, 2 or 4) sigmoid)."""
        output = tgt
        intermediate = []
        reference_points = refpoints_unsigmoid.sigmoid()
        ref_points = [reference_points]
        for layer_id, layer in enumerate(self.layers):
            scale = torch.cat([valid_ratios] * (reference_points.shape[-1] // 2), -1)[:, None]  # (B, 1, L, 2|4)
            reference_points_input = reference_points[:, :, None] * scale  # (B, Q, L, 2|4)
            if self.ref_point_head is not None:
                query_sine_embed = gen_sineembed_for_position(reference_points_input[:, :, 0, :], self.d_model)
                query_pos = self.ref_point_head(query_sine_embed)
            output = layer(output, query_pos, reference_points_input, memory, memory_padding_mask,
                           level_start_index, spatial_shapes, self_attn_mask=self_attn_mask)
            if self.bbox_embed is not None:
                new_reference_points = self.refine(layer_id, output, reference_points)
                reference_points = new_reference_points.detach()
                ref_points.append(new_reference_points if self.look_forward_twice else reference_points)
            intermediate.append(self.norm(output) if self.norm is not None else output)
            if mask_update is not None and layer_id + 1 < self.num_layers:
                new_mask = mask_update(layer_id, output, reference_points)
                self_attn_mask = self_attn_mask if new_mask is None else new_mask
        return intermediate, ref_points

    def refine(self, layer_id: int, output: Tensor, reference_points: Tensor) -> Tensor:
        """Layer `layer_id`'s refined boxes (B, Q, 4) sigmoid: its box head's delta added to the logits of the
        current references (to their (x, y) only when they are points)."""
        return refine_boxes(self.bbox_embed[layer_id](output), reference_points, self.logit_eps)
