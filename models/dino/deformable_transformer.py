"""The deformable transformer, assembled from parts: encoder -> query selection -> decoder.

Every part is handed in by the detector's builder: the encoder (its layers: DINO's, or AugDETR's hybrid
ones first), the query selection (DINO's mixed two-stage selection, ...), the decoder (its layers, whose
cross-attention may be AugDETR's EMCA, and the prediction heads it refines boxes with) and what the
decoder's cross-attention reads of the encoder (`LastEncoderLayer`, or AugDETR's mix of several layers).
The transformer owns only the level embedding. It runs, and is tested, on its own.
"""
from typing import List, NamedTuple, Optional

import torch
from torch import Tensor, nn

from ..common.layers import coordinate_dtype
from .ops import MSDeformAttn
from .query_selection import Queries, QuerySelection
from .transformer_layers import DeformableDecoder, DeformableEncoder, MaskUpdate


class LastEncoderLayer(nn.Module):
    """What the decoder's cross-attention reads: the last encoder layer's output (B, S, C)."""
    needs_layer_outputs = False

    def forward(self, memory: Tensor, layer_outputs: Optional[List[Tensor]], padding_mask: Tensor,
                spatial_shapes: List, num_queries: int):
        return memory


class TransformerOutput(NamedTuple):
    """hs: per decoder layer, its output (B, D + Q, C) (after the decoder's final norm, if it has one);
    references: num_layers + 1 boxes (B, D + Q, 4) sigmoid, the decoder's initial ones first (refined
    ones per layer, see DeformableDecoder); queries: the selected queries (Queries: the encoder
    proposals' predictions among them); memory: the last encoder layer's output (B, S, C). D denoising
    queries (if given) come before the Q selected ones."""
    hs: List[Tensor]
    references: List[Tensor]
    queries: Queries
    memory: Tensor


class DeformableTransformer(nn.Module):
    """Encoder + query selection + decoder over flattened multi-scale features.

    The query selection's modules are registered on the transformer itself under their own names (DINO's
    checkpoints name them transformer.tgt_embed, transformer.enc_output, ...), so the selection is not a
    child module; the transformer keeps its training mode in step with its own."""

    def __init__(self, encoder: DeformableEncoder, decoder: DeformableDecoder, query_selection: QuerySelection,
                 num_feature_levels: int, d_model: int, decoder_memory: Optional[nn.Module] = None):
        super().__init__()
        if list(query_selection.parameters(recurse=False)) or list(query_selection.buffers(recurse=False)):
            raise ValueError("a query selection keeps its tensors in submodules (registered on the transformer)")
        self.d_model = d_model
        self.num_feature_levels = num_feature_levels
        self.encoder = encoder
        self.decoder = decoder
        self.decoder_memory = decoder_memory if decoder_memory is not None else LastEncoderLayer()
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self._reset_parameters()
        for name, part in query_selection.named_children():
            if part is not None:
                self.add_module(name, part)
        self.__dict__["query_selection"] = query_selection  # not a child: its parts are registered above

    @property
    def num_decoder_layers(self) -> int:
        return self.decoder.num_layers

    def _reset_parameters(self) -> None:
        """Xavier-uniform weights for the encoder's and decoder's layers (not the prediction heads the
        decoder was given), MSDeformAttn's own initialisation, a normal level embedding."""
        heads = {id(p) for module in self.decoder.head_modules() for p in module.parameters()}
        for p in self.parameters():
            if p.dim() > 1 and id(p) not in heads:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m._reset_parameters()
        nn.init.normal_(self.level_embed)

    def train(self, mode: bool = True):
        super().train(mode)
        self.query_selection.train(mode)
        return self

    @staticmethod
    def valid_ratio(mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """mask (B, H, W) True = padding -> (B, 2) fraction of valid width and height."""
        _, h, w = mask.shape
        valid_h = (~mask[:, :, 0]).sum(1)
        valid_w = (~mask[:, 0, :]).sum(1)
        return torch.stack([valid_w.to(dtype) / w, valid_h.to(dtype) / h], -1)

    def flatten_levels(self, srcs: List[Tensor], masks: List[Tensor], pos_embeds: List[Tensor]):
        """Lists of (B, C, H_l, W_l) maps -> tokens (B, S, C), masks (B, S), pos + level embedding (B, S, C)."""
        shapes = [tuple(s.shape[-2:]) for s in srcs]
        src_flatten = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        mask_flatten = torch.cat([m.flatten(1) for m in masks], 1)
        pos_flatten = torch.cat([p.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1)
                                 for lvl, p in enumerate(pos_embeds)], 1)
        return src_flatten, mask_flatten, pos_flatten, shapes

    def forward(self, srcs: List[Tensor], masks: List[Tensor], pos_embeds: List[Tensor],
                dn_anchors: Optional[Tensor] = None, dn_content: Optional[Tensor] = None,
                self_attn_mask: Optional[Tensor] = None, mask_update: Optional[MaskUpdate] = None,
                query_embed: Optional[Tensor] = None) -> TransformerOutput:
        """srcs/pos_embeds: per level (B, C, H_l, W_l); masks (B, H_l, W_l) True = padding.
        dn_anchors (B, D, 4) logits and dn_content (B, D, C): denoising queries put before the selected
        ones (D = 0 when None); self_attn_mask (D+Q, D+Q) or per image and head (B * heads, D+Q, D+Q) bool,
        True = blocked; mask_update: the decoder's hook to change it between layers; query_embed: the
        detector's learned query embeddings, for the query selection."""
        src_flatten, mask_flatten, pos_flatten, shapes = self.flatten_levels(srcs, masks, pos_embeds)
        # (L, 2) int64. While an ONNX export traces, from the maps' own shapes (torch._shape_as_tensor), so the
        # graph keeps the level sizes as functions of the input's height and width; otherwise from Python ints
        # (a constant tensor, which fake-tensor FLOP counting can also build)
        if torch.jit.is_tracing():
            spatial_shapes = torch.stack([torch._shape_as_tensor(s)[-2:] for s in srcs]).to(src_flatten.device)
        else:
            spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=src_flatten.device)
        level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
        valid_ratios = torch.stack([self.valid_ratio(m, coordinate_dtype(src_flatten)) for m in masks], 1)  # (B, L, 2)

        memory, layer_outputs = self.encoder(src_flatten, pos_flatten, spatial_shapes, shapes, level_start_index,
                                             valid_ratios, mask_flatten,
                                             keep_layer_outputs=self.decoder_memory.needs_layer_outputs)
        queries = self.query_selection(memory, mask_flatten, shapes, query_embed)
        content, anchors, position = queries.content, queries.anchors, queries.position
        if dn_anchors is not None:
            anchors = torch.cat([dn_anchors, anchors], dim=1)
            content = torch.cat([dn_content, content], dim=1)
        dec_memory = self.decoder_memory(memory, layer_outputs, mask_flatten, shapes, content.shape[1])
        hs, references = self.decoder(content, dec_memory, mask_flatten, anchors, level_start_index, spatial_shapes,
                                      valid_ratios, self_attn_mask=self_attn_mask, mask_update=mask_update,
                                      query_pos=position)
        return TransformerOutput(hs, references, queries, memory)
