"""EMCA as the paper writes the sum, for tests: every encoder layer projected, padded tokens
zeroed, one pure-PyTorch deformable-attention call per layer."""
import torch.nn.functional as F

from models.dino.augdetr.emca import EncoderMixingAttention
from models.dino.ops import ms_deform_attn_pytorch


def paper_loop(m: EncoderMixingAttention, query, ref, memories, spatial, start, mask):
    """memories (K, B, S, C), mask (B, S) -> (B, Lq, C), the module's output by the slow route."""
    loc, weights = m.sampling_locations_and_weights(query, ref, spatial)
    gates = m.mix_weights(query).sigmoid()
    weight, bias = m.value_projections()
    total = 0
    for k in range(m.num_mixed):
        value = F.linear(memories[k], weight[k], bias[k]).masked_fill(mask[..., None], 0.0)
        value = value.view(*value.shape[:2], m.n_heads, -1)
        total = total + gates[..., k:k + 1] * ms_deform_attn_pytorch(value, spatial, start, loc, weights)
    return m.output_proj(total)
