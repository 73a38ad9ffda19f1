"""EMCA as the paper writes the sum, for tests: every encoder layer projected, padded tokens
zeroed, one pure-PyTorch deformable-attention call per layer. `reproduction_loop` is the earlier
reproduction's order of the same steps: gates from the content query, and each layer's sample
put through the output projection before it is gated."""
import torch.nn.functional as F

from models.dino.augdetr.emca import EncoderMixingAttention
from models.dino.ops import ms_deform_attn_pytorch


def _layer_samples(m: EncoderMixingAttention, query, ref, memories, spatial, start, mask):
    """What each encoder layer contributes before gating: K tensors (B, Lq, C), its projected value map
    (zero at padded tokens) sampled with the query's locations and weights."""
    loc, weights = m.sampling_locations_and_weights(query, ref, spatial)
    weight, bias = m.value_projections()
    samples = []
    for k in range(m.num_mixed):
        value = F.linear(memories[k], weight[k], bias[k]).masked_fill(mask[..., None], 0.0)
        value = value.view(*value.shape[:2], m.n_heads, -1)
        samples.append(ms_deform_attn_pytorch(value, spatial, start, loc, weights))
    return samples


def paper_loop(m: EncoderMixingAttention, query, ref, memories, spatial, start, mask):
    """memories (K, B, S, C), mask (B, S) -> (B, Lq, C), the module's output by the slow route."""
    gates = m.mix_weights(query).sigmoid()
    samples = _layer_samples(m, query, ref, memories, spatial, start, mask)
    return m.output_proj(sum(gates[..., k:k + 1] * x for k, x in enumerate(samples)))


def reproduction_loop(m: EncoderMixingAttention, query, ref, memories, spatial, start, mask, content):
    """The same with the reproduction's choices: gates sigmoid(W_e content), and sum_k w_k output_proj(x_k)."""
    gates = m.mix_weights(content).sigmoid()
    samples = _layer_samples(m, query, ref, memories, spatial, start, mask)
    return sum(gates[..., k:k + 1] * m.output_proj(x) for k, x in enumerate(samples))
