"""DINO's deformable transformer: encoder, two-stage mixed query selection, decoder.

AugDETR plugs in here: hybrid encoder layers (HAE) replace the first encoder layers, and
the decoder's cross-attention may read several encoder layers (EMCA), for which the
encoder keeps its per-layer outputs.
"""
from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

from .augdetr.emca import EncoderMemories, EncoderMixingAttention
from .augdetr.hae import HybridEncoderLayer
from .ops import MSDeformAttn
from .query_selection import gen_encoder_output_proposals
from .transformer_layers import DeformableDecoder, DeformableDecoderLayer, DeformableEncoder, DeformableEncoderLayer


class DeformableTransformer(nn.Module):
    """Encoder + two-stage query selection + decoder.

    Args mirror DINO's config keys. `emca_enc_layers` (0-based encoder layer indices) is
    None when the decoder reads only the last encoder layer (plain DINO).
    """

    def __init__(self, d_model: int = 256, nhead: int = 8, num_queries: int = 900, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, dim_feedforward: int = 2048, dropout: float = 0.0,
                 activation: str = "relu", num_feature_levels: int = 4, enc_n_points: int = 4,
                 dec_n_points: int = 4, embed_init_tgt: bool = True, use_detached_boxes_dec_out: bool = False,
                 num_hae_layers: int = 0, hae_dense_level: int = -1, hae_ffn: bool = False,
                 emca_enc_layers: Optional[Sequence[int]] = None, emca_shared_value_proj: bool = False):
        super().__init__()
        if num_hae_layers > num_encoder_layers:
            raise ValueError(f"num_hae_layers={num_hae_layers} exceeds enc_layers={num_encoder_layers}")
        self.d_model = d_model
        self.num_queries = num_queries
        self.num_feature_levels = num_feature_levels
        self.num_decoder_layers = num_decoder_layers
        self.embed_init_tgt = embed_init_tgt

        enc_args = dict(d_model=d_model, d_ffn=dim_feedforward, dropout=dropout, activation=activation,
                        n_levels=num_feature_levels, n_heads=nhead, n_points=enc_n_points)
        enc_layers = [HybridEncoderLayer(**enc_args, dense_level=hae_dense_level, dense_ffn=hae_ffn)
                      for _ in range(num_hae_layers)]
        enc_layers += [DeformableEncoderLayer(**enc_args) for _ in range(num_encoder_layers - num_hae_layers)]
        self.encoder = DeformableEncoder(enc_layers)

        self.emca_enc_layers = None if emca_enc_layers is None else list(emca_enc_layers)
        if self.emca_enc_layers is not None:
            bad = [i for i in self.emca_enc_layers if not 0 <= i < num_encoder_layers]
            if bad or not self.emca_enc_layers:
                raise ValueError(f"emca_enc_layers={self.emca_enc_layers}: need indices in [0, {num_encoder_layers})")
        dec_layers = []
        for _ in range(num_decoder_layers):
            cross_attn = None
            if self.emca_enc_layers is not None:
                cross_attn = EncoderMixingAttention(d_model, num_feature_levels, nhead, dec_n_points,
                                                    num_mixed=len(self.emca_enc_layers),
                                                    shared_value_proj=emca_shared_value_proj)
            dec_layers.append(DeformableDecoderLayer(d_model, dim_feedforward, dropout, activation,
                                                     num_feature_levels, nhead, dec_n_points, cross_attn=cross_attn))
        self.decoder = DeformableDecoder(dec_layers, d_model, use_detached_boxes_dec_out=use_detached_boxes_dec_out)

        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.tgt_embed = nn.Embedding(num_queries, d_model) if embed_init_tgt else None
        self.enc_output = nn.Linear(d_model, d_model)
        self.enc_output_norm = nn.LayerNorm(d_model)
        # the two-stage heads are copies of DINO's heads, assigned by DINO
        self.enc_out_bbox_embed: Optional[nn.Module] = None
        self.enc_out_class_embed: Optional[nn.Module] = None
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m._reset_parameters()
        nn.init.normal_(self.level_embed)

    @staticmethod
    def valid_ratio(mask: Tensor) -> Tensor:
        """mask (B, H, W) True = padding -> (B, 2) fraction of valid width and height."""
        _, h, w = mask.shape
        valid_h = (~mask[:, :, 0]).sum(1)
        valid_w = (~mask[:, 0, :]).sum(1)
        return torch.stack([valid_w.float() / w, valid_h.float() / h], -1)

    def flatten_levels(self, srcs: List[Tensor], masks: List[Tensor], pos_embeds: List[Tensor]):
        """Lists of (B, C, H_l, W_l) maps -> tokens (B, S, C), masks (B, S), pos + level embedding (B, S, C)."""
        shapes = [tuple(s.shape[-2:]) for s in srcs]
        src_flatten = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        mask_flatten = torch.cat([m.flatten(1) for m in masks], 1)
        pos_flatten = torch.cat([p.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1)
                                 for lvl, p in enumerate(pos_embeds)], 1)
        return src_flatten, mask_flatten, pos_flatten, shapes

    def select_queries(self, memory: Tensor, mask_flatten: Tensor, shapes: List):
        """Two-stage mixed query selection: the top-k encoder proposals give the anchors
        (detached); the content queries are the learnable tgt_embed."""
        output_memory, output_proposals = gen_encoder_output_proposals(memory, mask_flatten, shapes)
        output_memory = self.enc_output_norm(self.enc_output(output_memory))
        class_unselected = self.enc_out_class_embed(output_memory)  # (B, S, num_classes)
        coord_unselected = self.enc_out_bbox_embed(output_memory) + output_proposals  # (B, S, 4) logits
        topk = self.num_queries
        if memory.shape[1] < topk:
            raise ValueError(f"num_queries={topk} exceeds the {memory.shape[1]} encoder tokens of this batch: "
                             f"use larger images or --options num_queries=N with N <= {memory.shape[1]}")
        topk_idx = torch.topk(class_unselected.max(-1)[0], topk, dim=1)[1]  # (B, K)
        refpoint_undetach = torch.gather(coord_unselected, 1, topk_idx.unsqueeze(-1).expand(-1, -1, 4))
        init_box_proposal = torch.gather(output_proposals, 1, topk_idx.unsqueeze(-1).expand(-1, -1, 4)).sigmoid()
        tgt_undetach = torch.gather(output_memory, 1, topk_idx.unsqueeze(-1).expand(-1, -1, self.d_model))
        if self.embed_init_tgt:
            tgt = self.tgt_embed.weight[None].expand(memory.shape[0], -1, -1)
        else:
            tgt = tgt_undetach.detach()
        return tgt, refpoint_undetach, tgt_undetach, init_box_proposal

    def forward(self, srcs: List[Tensor], masks: List[Tensor], pos_embeds: List[Tensor],
                refpoint_embed: Optional[Tensor] = None, tgt: Optional[Tensor] = None,
                attn_mask: Optional[Tensor] = None):
        """srcs/pos_embeds: per level (B, C, H_l, W_l); masks (B, H_l, W_l).
        refpoint_embed (B, D, 4) logits and tgt (B, D, C): denoising queries put before the
        matching queries (D = 0 when None); attn_mask (D+Q, D+Q) bool.

        Returns hs (list of (B, D+Q, C)), references (list of (B, D+Q, 4)), hs_enc (1, B, Q, C),
        ref_enc (1, B, Q, 4) sigmoid boxes, init_box_proposal (B, Q, 4).
        """
        src_flatten, mask_flatten, pos_flatten, shapes = self.flatten_levels(srcs, masks, pos_embeds)
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=src_flatten.device)
        level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
        valid_ratios = torch.stack([self.valid_ratio(m) for m in masks], 1)  # (B, L, 2)

        keep = self.emca_enc_layers is not None
        memory, layer_outputs = self.encoder(src_flatten, pos_flatten, spatial_shapes, shapes, level_start_index,
                                             valid_ratios, mask_flatten, keep_layer_outputs=keep)
        tgt_, refpoint_undetach, tgt_undetach, init_box_proposal = self.select_queries(memory, mask_flatten, shapes)
        refpoint_ = refpoint_undetach.detach()
        if refpoint_embed is not None:
            refpoint_ = torch.cat([refpoint_embed, refpoint_], dim=1)
            tgt_ = torch.cat([tgt, tgt_], dim=1)
        # EMCA reads the chosen encoder layers stacked as (K, B, S, C)
        dec_memory = memory
        if keep:  # zeroed at padded tokens once, for all decoder layers, split where they sample first
            fine_tokens = self.decoder.layers[0].cross_attn.fine_tokens(shapes, tgt_.shape[1])
            dec_memory = EncoderMemories.stack([layer_outputs[i] for i in self.emca_enc_layers], mask_flatten,
                                               fine_tokens)
        hs, references = self.decoder(tgt_, dec_memory, mask_flatten, refpoint_, level_start_index, spatial_shapes,
                                      valid_ratios, tgt_mask=attn_mask)
        return hs, references, tgt_undetach.unsqueeze(0), refpoint_undetach.sigmoid().unsqueeze(0), init_box_proposal


def build_deformable_transformer(args) -> DeformableTransformer:
    """Map the config onto DeformableTransformer (two-stage 'standard', post-norm: DINO's only layout)."""
    emca_layers = None
    if args.use_emca:
        emca_layers = list(range(args.enc_layers)) if args.emca_enc_layers is None else list(args.emca_enc_layers)
    return DeformableTransformer(
        d_model=args.hidden_dim, nhead=args.nheads, num_queries=args.num_queries, num_encoder_layers=args.enc_layers,
        num_decoder_layers=args.dec_layers, dim_feedforward=args.dim_feedforward, dropout=args.dropout,
        activation=args.transformer_activation, num_feature_levels=args.num_feature_levels,
        enc_n_points=args.enc_n_points, dec_n_points=args.dec_n_points, embed_init_tgt=args.embed_init_tgt,
        use_detached_boxes_dec_out=args.use_detached_boxes_dec_out,
        num_hae_layers=args.num_hae_layers if args.use_hae else 0, hae_dense_level=args.hae_dense_level,
        hae_ffn=args.hae_ffn, emca_enc_layers=emca_layers, emca_shared_value_proj=args.emca_shared_value_proj)
