"""The CPU kernel's code paths: the fixed-width channel loops (D = 32, DINO's width, and
D = 256, EMCA's sample-first width, summed in 64-channel passes; in registers with AVX2 for
fp32 / bf16) and the run-time-width loops, both against the
reference; bitwise determinism over thread counts and repeated calls (the backward's output
buffers start uninitialised and every slice of grad_value is owned by one thread)."""
import pytest
import torch

from models.dino.ops import ms_deform_attn_pytorch
from tests.ops.conftest import make_inputs

# very different level sizes, a 1x1 level, and locations drawn in [-0.1, 1.1]: many corners and
# whole points fall outside the maps
SHAPES = ((17, 23), (9, 12), (1, 1), (2, 3))


def _fwd_bwd(fn, args, grad_out):
    value, shapes, starts, loc, attn = [a.detach().clone().requires_grad_(a.is_floating_point()) for a in args]
    out = fn(value, shapes, starts, loc, attn)
    return (out,) + torch.autograd.grad(out, (value, loc, attn), grad_out)


@pytest.mark.parametrize("d", [32, 256, 24])  # 32, 256: fixed-width paths; 24: run-time width
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_channel_paths_match_reference(compiled, d, dtype, tol):
    args = make_inputs(n=2, lq=11, m=3, d=d, shapes=SHAPES, p=3, dtype=dtype, seed=d)
    grad_out = torch.randn(2, 11, 3 * d, dtype=dtype, generator=torch.Generator().manual_seed(1))
    got = _fwd_bwd(compiled.ms_deform_attn_forward, args, grad_out)
    want = _fwd_bwd(ms_deform_attn_pytorch, args, grad_out)
    for name, g, w in zip(("output", "grad_value", "grad_loc", "grad_attn"), got, want):
        torch.testing.assert_close(g, w, rtol=tol, atol=tol * 10, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("d", [32, 256])
def test_fixed_width_bf16_and_emca(compiled, d):
    """bf16 value at the fixed widths (widened in registers) and the EMCA layout (3 maps share 2
    location heads)."""
    k, m = 3, 2
    value, shapes, starts, loc, attn = make_inputs(n=2, lq=6, m=k * m, d=d, shapes=SHAPES, p=2,
                                                   dtype=torch.float32, loc_heads=m)
    rep = (loc.repeat(1, 1, k, 1, 1, 1), attn.repeat(1, 1, k, 1, 1))
    vb = value.bfloat16()
    ref = ms_deform_attn_pytorch(vb.float(), shapes, starts, *rep)
    out = compiled.ms_deform_attn_forward(vb, shapes, starts, loc, attn)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)
    grad_out = torch.randn(2, 6, k * m * d)
    gv, gl, ga = compiled.ms_deform_attn_backward(value, shapes, starts, loc, attn, grad_out)
    _, gv_r, gl_r, ga_r = _fwd_bwd(ms_deform_attn_pytorch, (value, shapes, starts) + rep, grad_out)
    torch.testing.assert_close(gv, gv_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gl, gl_r.view(2, 6, k, m, 4, 2, 2).sum(2), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ga, ga_r.view(2, 6, k, m, 4, 2).sum(2), rtol=1e-5, atol=1e-4)


def test_backward_bitwise_deterministic_over_threads_and_calls(compiled):
    args = make_inputs(n=3, lq=40, m=5, d=32, shapes=SHAPES, p=4, dtype=torch.float32)
    grad_out = torch.randn(3, 40, 5 * 32)
    threads = torch.get_num_threads()
    results = []
    try:
        for n_threads in (1, 2, 3, 1):
            torch.set_num_threads(n_threads)
            # a garbage-filled allocation first, so an uninitialised output buffer would show
            torch.full((3 * sum(a * b for a, b in SHAPES) * 5 * 32,), float("nan"))
            results.append(compiled.ms_deform_attn_backward(*args, grad_out))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)
    assert all(torch.isfinite(t).all() for t in results[0])


def test_zero_sized_grad_output_gives_zero_grads(compiled):
    """No queries: nothing flows back, every gradient is zero (not left uninitialised)."""
    value, shapes, starts, loc, attn = make_inputs(n=1, lq=0, m=2, d=32, shapes=SHAPES, p=2, dtype=torch.float32)
    gv, gl, ga = compiled.ms_deform_attn_backward(value, shapes, starts, loc, attn, torch.zeros(1, 0, 64))
    assert gv.shape == value.shape and gv.abs().max() == 0
    assert gl.numel() == 0 and ga.numel() == 0


@pytest.mark.parametrize("d", [32, 24])
def test_strided_grad_output_read_in_place(compiled, d):
    """grad_output of out.sum() (stride 0 everywhere) and a non-contiguous one give the same
    gradients as their contiguous copies."""
    args = make_inputs(n=2, lq=5, m=2, d=d, shapes=SHAPES, p=2, dtype=torch.float32)
    expanded = torch.ones(()).expand(2, 5, 2 * d)
    strided = torch.randn(2, 2 * d, 5).transpose(1, 2)
    for grad_out in (expanded, strided):
        assert not grad_out.is_contiguous()
        got = compiled.ms_deform_attn_backward(*args, grad_out)
        want = compiled.ms_deform_attn_backward(*args, grad_out.contiguous())
        for a, b in zip(got, want):
            assert torch.equal(a, b)
