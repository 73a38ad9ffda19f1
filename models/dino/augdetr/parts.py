"""AugDETR's parts for the deformable transformer's builder: what the config (use_hae, use_emca and
their keys) asks for, or the plain layers when it asks for nothing."""
from typing import Dict, List, Optional

from torch import Tensor, nn

from ..deformable_transformer import LastEncoderLayer
from ..transformer_layers import DeformableDecoder, DeformableEncoderLayer
from .emca import EncoderMemories, EncoderMixingAttention
from .hae import HybridAttentionEncoderLayer


def encoder_layers(args, sizes: Dict) -> List[nn.Module]:
    """enc_layers encoder layers of `sizes` (DeformableEncoderLayer's arguments): with use_hae the first
    num_hae_layers are hybrid (dense attention on level hae_dense_level first)."""
    hybrid = args.num_hae_layers if args.use_hae else 0
    return ([HybridAttentionEncoderLayer(**sizes, dense_level=args.hae_dense_level, dense_ffn=args.hae_ffn)
             for _ in range(hybrid)] + [DeformableEncoderLayer(**sizes) for _ in range(args.enc_layers - hybrid)])


def mixed_encoder_layers(args) -> Optional[List[int]]:
    """The 0-based encoder layers EMCA mixes (all by default), or None without use_emca."""
    if not args.use_emca:
        return None
    return list(range(args.enc_layers)) if args.emca_enc_layers is None else list(args.emca_enc_layers)


def cross_attention(args, d_model: int, n_levels: int, n_heads: int, n_points: int) -> Optional[nn.Module]:
    """A decoder layer's cross-attention: EMCA with use_emca, else None (the layer's own MSDeformAttn)."""
    layers = mixed_encoder_layers(args)
    if layers is None:
        return None
    return EncoderMixingAttention(d_model, n_levels, n_heads, n_points, num_mixed=len(layers),
                                  shared_value_proj=args.emca_shared_value_proj, gate_input=args.emca_gate_input,
                                  output_proj=args.emca_output_proj, gate_init=args.emca_gate_init)


class MixedEncoderLayers(nn.Module):
    """What EMCA's cross-attention reads: the encoder layers `layers` (0-based) stacked as EncoderMemories
    (K, B, S, C), zeroed at padded tokens once for all decoder layers and split where they sample first.
    `fine_tokens(spatial_shapes, num_queries)` is the first EMCA layer's split (all layers share it)."""
    needs_layer_outputs = True

    def __init__(self, layers: List[int], fine_tokens):
        super().__init__()
        self.layers = list(layers)
        self.fine_tokens = fine_tokens

    def forward(self, memory: Tensor, layer_outputs: List[Tensor], padding_mask: Tensor, spatial_shapes: List,
                num_queries: int) -> EncoderMemories:
        return EncoderMemories.stack([layer_outputs[i] for i in self.layers], padding_mask,
                                     self.fine_tokens(spatial_shapes, num_queries))


def decoder_memory(args, decoder: DeformableDecoder) -> nn.Module:
    """With use_emca, the mixed encoder layers EMCA reads; otherwise the last encoder layer."""
    layers = mixed_encoder_layers(args)
    if layers is None:
        return LastEncoderLayer()
    bad = [i for i in layers if not 0 <= i < args.enc_layers]
    if bad or not layers:
        raise ValueError(f"emca_enc_layers={layers}: need indices in [0, {args.enc_layers})")
    return MixedEncoderLayers(layers, decoder.layers[0].cross_attn.fine_tokens)
