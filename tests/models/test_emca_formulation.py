"""EMCA's two exact formulations (project first / sample first) against the paper's loop.

The loop projects every encoder layer, zeroes padded tokens and calls deformable attention
once per layer. Both formulations must give its outputs and gradients (fp64, so that only
the order of the sums differs), on maps with padding and with sampling points off the map,
where the sampled bias is scaled by less than the attention weight.
"""
import pytest
import torch

from models.dino.augdetr.emca import (
    FORMULATIONS,
    SAMPLE_FIRST_MIN_TOKENS_PER_POINT,
    EncoderMemories,
    EncoderMixingAttention,
)
from models.dino.ops import ms_deform_attn, ms_deform_attn_pytorch, set_backend

from emca_reference import paper_loop

C, HEADS, POINTS, LEVELS = 32, 4, 2, 3
SHAPES = ((6, 8), (3, 4), (2, 2))


def make_module(k: int, shared: bool) -> EncoderMixingAttention:
    torch.manual_seed(0)
    m = EncoderMixingAttention(C, LEVELS, HEADS, POINTS, num_mixed=k, shared_value_proj=shared).double()
    with torch.no_grad():  # layers, gates and biases that differ, offsets that leave the map
        for name, p in m.named_parameters():
            p.add_(torch.randn_like(p) * (0.5 if "offsets" in name else 0.1))
    return m


def inputs(k: int, b: int = 2, lq: int = 5):
    g = torch.Generator().manual_seed(1)
    spatial = torch.tensor(SHAPES)
    start = torch.cat([spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]])
    s = int(spatial.prod(1).sum())
    memories = torch.randn(k, b, s, C, generator=g, dtype=torch.float64, requires_grad=True)
    query = torch.randn(b, lq, C, generator=g, dtype=torch.float64, requires_grad=True)
    ref = (torch.rand(b, lq, LEVELS, 4, generator=g, dtype=torch.float64) * torch.tensor([1.0, 1.0, 0.6, 0.6])
           ).requires_grad_()  # centres anywhere: points near the border fall off the map
    mask = torch.zeros(b, s, dtype=torch.bool)
    mask[1, 5:8] = mask[1, 48 + 3] = True  # padding on two levels of the second image
    return query, ref, memories, spatial, start, mask


def outputs_and_grads(fn, m, args):
    out = fn(*args)
    wrt = [args[0], args[1], args[2]] + list(m.parameters())
    return out, torch.autograd.grad(out.square().sum(), wrt)


def with_encoder_memories(m: EncoderMixingAttention, own_split: bool = True):
    """m called as the transformer calls it: the maps zeroed once, as EncoderMemories split where m
    samples first; or split elsewhere (m then joins the parts)."""
    def call(query, ref, memories, spatial, start, mask):
        split = m.fine_tokens(spatial.tolist(), query.shape[1]) if own_split else 7
        return m(query, ref, EncoderMemories.stack(memories.unbind(0), mask, split), spatial, start, mask)
    return call


@pytest.mark.parametrize("backend", ["pytorch", "compiled"])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("formulation", FORMULATIONS)
@pytest.mark.parametrize("prepared", [None, True, False], ids=["tensor", "encoder_memories", "other_split"])
def test_formulation_equals_paper_loop(formulation, shared, backend, prepared):
    set_backend(backend)
    try:
        m = make_module(3, shared)
        args = inputs(3)
        m.formulation = formulation
        out, grads = outputs_and_grads(m if prepared is None else with_encoder_memories(m, prepared), m, args)
        ref_out, ref_grads = outputs_and_grads(lambda *a: paper_loop(m, *a), m, args)
    finally:
        set_backend(None)
    assert torch.allclose(out, ref_out, rtol=1e-10, atol=1e-12)
    names = ["query", "reference_points", "memories"] + [n for n, _ in m.named_parameters()]
    for name, a, b in zip(names, grads, ref_grads):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-11), name


def test_masked_tokens_do_not_reach_the_output_in_either_formulation():
    m = make_module(2, False)
    query, ref, memories, spatial, start, mask = inputs(2)
    changed = memories.detach().clone()
    changed[:, mask] = 1e3
    for formulation in FORMULATIONS:
        m.formulation = formulation
        a = m(query, ref, memories, spatial, start, mask)
        b = m(query, ref, changed, spatial, start, mask)
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12), formulation


def test_encoder_memories_zero_the_padded_tokens_in_place():
    _, _, memories, _, _, mask = inputs(2)
    parts = EncoderMemories.stack(memories.detach().unbind(0), mask, 48)
    assert parts.fine.shape == (2, 2, 48, C) and parts.coarse.shape == (2, 2, 16, C)
    assert parts.fine.is_contiguous() and parts.coarse.is_contiguous()
    stacked = parts.maps
    assert stacked.shape == memories.shape
    assert (stacked[:, mask] == 0).all()
    assert torch.equal(stacked[:, ~mask], memories.detach()[:, ~mask])
    with pytest.raises(ValueError, match="fine_tokens=65 outside"):
        EncoderMemories.stack(memories.detach().unbind(0), mask, 65)


@pytest.mark.parametrize("backend", ["pytorch", "compiled"])
def test_levels_may_cover_only_the_leading_tokens_of_value(backend):
    """Sample first reads the fine levels out of the whole stack: extra tokens after the
    last level are never read, by the reference and the kernel alike."""
    query, ref, memories, spatial, start, mask = inputs(1)
    m = make_module(1, False)
    loc, weights = m.sampling_locations_and_weights(query, ref, spatial)
    value = memories.detach()[0].view(2, -1, HEADS, C // HEADS)
    set_backend(backend)
    try:
        full = ms_deform_attn(value, spatial[:2], start[:2], loc[:, :, :, :2].contiguous(),
                              weights[:, :, :, :2].contiguous())
    finally:
        set_backend(None)
    lead = int(spatial[:2].prod(1).sum())
    cut = ms_deform_attn_pytorch(value[:, :lead].contiguous(), spatial[:2], start[:2],
                                 loc[:, :, :, :2].contiguous(), weights[:, :, :, :2].contiguous())
    assert torch.allclose(full, cut, rtol=1e-12, atol=1e-12)


def test_sample_first_bias_scale_is_the_in_bounds_weight():
    """With zero projection weights the output (before output_proj) is beta * sum_k w_k b_k,
    beta = attention-weighted in-bounds, unpadded corner weight: below 1 off the map."""
    m = make_module(2, False)
    with torch.no_grad():
        m.value_proj.weight.zero_()
        m.extra_value_proj_weight.zero_()
        m.output_proj.weight.copy_(torch.eye(C, dtype=torch.float64))
        m.output_proj.bias.zero_()
    query, ref, memories, spatial, start, mask = inputs(2)
    m.formulation = "sample_first"
    out = m(query, ref, memories, spatial, start, mask).detach()
    loc, weights = m.sampling_locations_and_weights(query, ref, spatial)
    ones = (~mask).double()[:, :, None, None].expand(-1, -1, HEADS, 1)
    beta = ms_deform_attn_pytorch(ones.contiguous(), spatial, start, loc, weights)  # (B, Lq, M)
    gated_bias = m.mix_weights(query).sigmoid() @ m.value_projections()[1]  # (B, Lq, C)
    expected = beta.repeat_interleave(C // HEADS, -1) * gated_bias
    assert torch.allclose(out, expected.detach(), rtol=1e-12, atol=1e-12)
    assert beta.min() < 0.99  # the inputs do put points off the map / on padding


def test_rule_samples_first_the_leading_levels_with_enough_tokens_per_point():
    m = EncoderMixingAttention(C, LEVELS, HEADS, POINTS, num_mixed=2)
    per_point = SAMPLE_FIRST_MIN_TOKENS_PER_POINT * 100 * POINTS  # tokens per level for 100 queries
    big, small = int(per_point) + 1, int(per_point) - 1
    assert m.sample_first_levels([big, big, small], 100) == 2
    assert m.sample_first_levels([small, big, big], 100) == 0  # only a leading run
    assert m.sample_first_levels([big, big, big], 100) == 3
    m.formulation = "project_first"
    assert m.sample_first_levels([10 ** 9] * 3, 1) == 0
    m.formulation = "sample_first"
    assert m.sample_first_levels([1] * 3, 10 ** 6) == 3
    m.formulation = "sample-first"
    with pytest.raises(ValueError, match="formulation = 'sample-first'"):
        m.sample_first_levels([1], 1)
    assert set(FORMULATIONS) == {"auto", "project_first", "sample_first"}


def test_auto_splits_the_test_maps_between_the_formulations():
    """So that test_formulation_equals_paper_loop[auto] covers a split of the levels."""
    m = make_module(3, False)
    sizes = [h * w for h, w in SHAPES]
    assert 0 < m.sample_first_levels(sizes, inputs(3)[0].shape[1]) < LEVELS


def test_state_dict_keys_are_unchanged():
    keys = set(EncoderMixingAttention(C, LEVELS, HEADS, POINTS, num_mixed=3).state_dict())
    assert keys == {f"{n}.{p}" for n in ("sampling_offsets", "attention_weights", "value_proj", "output_proj",
                                          "mix_weights") for p in ("weight", "bias")} | {
        "extra_value_proj_weight", "extra_value_proj_bias"}


def test_sample_first_runs_in_bf16_autocast_like_project_first():
    m = make_module(2, False).float()
    query, ref, memories, spatial, start, mask = (t.float() if t.is_floating_point() else t for t in inputs(2))
    outs = {}
    for formulation in ("project_first", "sample_first"):
        m.formulation = formulation
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs[formulation] = m(query, ref, memories, spatial, start, mask).float()
    assert torch.allclose(outs["project_first"], outs["sample_first"], rtol=0.05, atol=0.05)
    assert ms_deform_attn is not None
