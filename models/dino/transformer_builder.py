"""Building the deformable transformer from the config: its layers (AugDETR's parts where the config
asks for them) and the parts the detector gives (query selection, prediction heads)."""
from typing import Callable, Optional

from torch import nn

from .augdetr import parts as augdetr
from .deformable_transformer import DeformableTransformer
from .query_selection import QuerySelection
from .transformer_layers import DeformableDecoder, DeformableDecoderLayer, DeformableEncoder


def build_deformable_transformer(args, query_selection: QuerySelection, class_embed: Optional[nn.ModuleList],
                                 bbox_embed: Optional[nn.ModuleList], final_norm: bool = True,
                                 look_forward_twice: Optional[bool] = None, position_from_boxes: bool = True,
                                 query_dim: int = 4, logit_eps: float = 1e-3,
                                 decoder_type: Callable[..., DeformableDecoder] = DeformableDecoder
                                 ) -> DeformableTransformer:
    """The transformer of the config's sizes (DINO's post-norm layers): encoder layers (the first
    num_hae_layers hybrid with use_hae), decoder layers (EMCA's cross-attention with use_emca) refining
    boxes with bbox_embed. look_forward_twice defaults to DINO's (not use_detached_boxes_dec_out).
    decoder_type: the decoder class (or a partial of one) taking DeformableDecoder's arguments."""
    d_model, levels, heads = args.hidden_dim, args.num_feature_levels, args.nheads
    layer_sizes = dict(d_model=d_model, d_ffn=args.dim_feedforward, dropout=args.dropout,
                       activation=args.transformer_activation, n_levels=levels, n_heads=heads)
    encoder = DeformableEncoder(augdetr.encoder_layers(args, dict(layer_sizes, n_points=args.enc_n_points)))
    decoder_layers = [DeformableDecoderLayer(**layer_sizes, n_points=args.dec_n_points,
                                             cross_attn=augdetr.cross_attention(args, d_model, levels, heads,
                                                                                args.dec_n_points))
                      for _ in range(args.dec_layers)]
    if look_forward_twice is None:
        look_forward_twice = not args.use_detached_boxes_dec_out
    decoder = decoder_type(decoder_layers, d_model, box_heads=bbox_embed, class_heads=class_embed,
                           query_dim=query_dim, final_norm=final_norm, look_forward_twice=look_forward_twice,
                           position_from_boxes=position_from_boxes, logit_eps=logit_eps)
    return DeformableTransformer(encoder, decoder, query_selection, levels, d_model,
                                 decoder_memory=augdetr.decoder_memory(args, decoder))
