"""Numerics of the pure-PyTorch reference and of the compiled CPU kernel against it."""
import pytest
import torch

from models.dino.ops import ms_deform_attn_pytorch
from tests.ops.conftest import make_inputs

OP_ARGS = "value, spatial_shapes, level_start_index, loc, attn"


def naive(value, spatial_shapes, level_start_index, loc, attn):
    """Per-point python loop: bilinear at (x*W - 0.5, y*H - 0.5), zeros outside."""
    n, _, m, d = value.shape
    _, lq, _, nl, npt, _ = loc.shape
    out = torch.zeros(n, lq, m, d, dtype=value.dtype)
    for b in range(n):
        for q in range(lq):
            for h in range(m):
                for lvl in range(nl):
                    hl, wl = spatial_shapes[lvl].tolist()
                    start = int(level_start_index[lvl])
                    for p in range(npt):
                        x = float(loc[b, q, h, lvl, p, 0]) * wl - 0.5
                        y = float(loc[b, q, h, lvl, p, 1]) * hl - 0.5
                        x0, y0 = int(torch.tensor(x).floor()), int(torch.tensor(y).floor())
                        for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
                            if 0 <= yy < hl and 0 <= xx < wl:
                                wgt = (1 - abs(x - xx)) * (1 - abs(y - yy))
                                out[b, q, h] += attn[b, q, h, lvl, p] * wgt * value[b, start + yy * wl + xx, h]
    return out.flatten(2)


def test_reference_matches_naive_loop():
    args = make_inputs(n=2, lq=3, m=2, d=3, p=2, lo=-0.2, hi=1.2)
    torch.testing.assert_close(ms_deform_attn_pytorch(*args), naive(*args), rtol=1e-10, atol=1e-12)


def test_reference_is_not_trivially_zero():
    args = make_inputs()
    assert ms_deform_attn_pytorch(*args).abs().sum() > 0


def _grads(fn, args, grad_out):
    value, shapes, starts, loc, attn = [a.detach().clone().requires_grad_(a.is_floating_point()) for a in args]
    out = fn(value, shapes, starts, loc, attn)
    grads = torch.autograd.grad(out, (value, loc, attn), grad_out)
    return out, grads


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_compiled_forward_backward_match_reference(compiled, n, dtype, tol):
    shapes = ((17, 23), (9, 12), (1, 1), (2, 3))  # very different sizes, one 1x1
    args = make_inputs(n=n, lq=7, m=3, d=8, shapes=shapes, p=3, dtype=dtype)
    grad_out = torch.randn(n, 7, 24, dtype=dtype)
    out_c, grads_c = _grads(compiled.ms_deform_attn_forward, args, grad_out)
    out_r, grads_r = _grads(ms_deform_attn_pytorch, args, grad_out)
    torch.testing.assert_close(out_c, out_r, rtol=tol, atol=tol)
    for gc, gr in zip(grads_c, grads_r):
        torch.testing.assert_close(gc, gr, rtol=tol, atol=tol * 10)


def test_compiled_borders_and_outside(compiled):
    """Locations exactly on 0 and 1, on pixel centres, and outside [0, 1]."""
    value, shapes, starts, loc, attn = make_inputs(n=1, lq=4, m=1, d=5, shapes=((4, 5), (1, 1)), p=4)
    special = torch.tensor([0.0, 1.0, -0.3, 1.3, 0.5 / 5, 4.5 / 5, -0.1, 1.0 - 1e-9], dtype=torch.float64)
    loc.view(-1)[: 8 * 8] = special.repeat(8)
    loc[0, 0, 0, :, 0] = torch.tensor([0.0, 0.0], dtype=torch.float64)
    loc[0, 0, 0, :, 1] = torch.tensor([1.0, 1.0], dtype=torch.float64)
    loc[0, 1, 0, :, :] = 5.0  # entirely outside: contributes nothing
    grad_out = torch.randn(1, 4, 5, dtype=torch.float64)
    out_c, grads_c = _grads(compiled.ms_deform_attn_forward, (value, shapes, starts, loc, attn), grad_out)
    out_r, grads_r = _grads(ms_deform_attn_pytorch, (value, shapes, starts, loc, attn), grad_out)
    torch.testing.assert_close(out_c, out_r, rtol=1e-12, atol=1e-12)
    assert out_c[0, 1].abs().max() == 0
    torch.testing.assert_close(grads_c[0], grads_r[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grads_c[2], grads_r[2], rtol=1e-10, atol=1e-10)
    # the location gradient is one-sided at kinks (pixel-centre lines and the -1 border); compare elsewhere
    size = torch.tensor([[5.0, 4.0], [1.0, 1.0]], dtype=torch.float64)[None, None, None, :, None, :]
    pix = loc * size - 0.5
    smooth = (pix - pix.round()).abs() > 1e-9
    torch.testing.assert_close(grads_c[1][smooth], grads_r[1][smooth], rtol=1e-10, atol=1e-10)
    assert smooth.sum() > 20 and torch.isfinite(grads_c[1]).all()


@pytest.mark.parametrize("d", [1, 30, 32, 64, 71])
def test_compiled_gradcheck(compiled, d):
    value, shapes, starts, loc, attn = make_inputs(n=1, lq=2, m=2, d=d, shapes=((3, 4), (2, 2)), p=2, seed=d)
    inputs = (value.requires_grad_(), shapes, starts, loc.requires_grad_(), attn.requires_grad_())
    assert torch.autograd.gradcheck(compiled.ms_deform_attn_forward, inputs, eps=1e-6, atol=1e-5)


def test_compiled_bf16_close_to_fp32(compiled):
    value, shapes, starts, loc, attn = make_inputs(n=2, lq=9, m=2, d=16, dtype=torch.float32)
    ref = ms_deform_attn_pytorch(value.bfloat16().float(), shapes, starts, loc, attn)
    out = compiled.ms_deform_attn_forward(value.bfloat16(), shapes, starts, loc, attn)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)
    grad_value, grad_loc, _ = compiled.ms_deform_attn_backward(value.bfloat16(), shapes, starts, loc, attn,
                                                               torch.ones_like(out))
    v32 = value.bfloat16().float().requires_grad_()
    loc32 = loc.clone().requires_grad_()
    ref_gv, ref_gl = torch.autograd.grad(ms_deform_attn_pytorch(v32, shapes, starts, loc32, attn).sum(), (v32, loc32))
    assert grad_value.dtype == torch.bfloat16 and grad_loc.dtype == torch.float32
    torch.testing.assert_close(grad_value.float(), ref_gv, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(grad_loc, ref_gl, rtol=1e-2, atol=2e-2)


def test_compiled_rejects_bad_input_with_clear_error(compiled):
    value, shapes, starts, loc, attn = make_inputs(dtype=torch.float32)
    with pytest.raises(RuntimeError, match="sampling_locations and attention_weights must be Float"):
        compiled.ms_deform_attn_forward(value, shapes, starts, loc.double(), attn)
    with pytest.raises(RuntimeError, match="spatial_shapes must be an int64"):
        compiled.ms_deform_attn_forward(value, shapes.int(), starts, loc, attn)
    with pytest.raises(RuntimeError, match="level 1 .* does not fit in value's 29 tokens"):
        compiled.ms_deform_attn_forward(value[:, :29].clone(), shapes, starts, loc, attn)
    with pytest.raises(RuntimeError, match="heads"):
        compiled.ms_deform_attn_forward(value, shapes, starts, torch.cat([loc] * 3, 2)[:, :, :3],
                                        torch.cat([attn] * 3, 2)[:, :, :3])


def test_opcheck(compiled):
    value, shapes, starts, loc, attn = make_inputs(n=2, lq=3, m=2, d=4, dtype=torch.float32)
    args = (value.requires_grad_(), shapes, starts, loc.requires_grad_(), attn.requires_grad_())
    torch.library.opcheck(compiled.ms_deform_attn_forward.default, args)
    grad_out = torch.randn(2, 3, 8)
    torch.library.opcheck(compiled.ms_deform_attn_backward.default,
                          tuple(a.detach() for a in args) + (grad_out,))


def test_torch_compile_fullgraph(compiled):
    from models.dino.ops import ms_deform_attn

    value, shapes, starts, loc, attn = make_inputs(dtype=torch.float32)
    eager = ms_deform_attn(value, shapes, starts, loc, attn)  # resolves the backend outside compile
    fn = torch.compile(ms_deform_attn, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(fn(value, shapes, starts, loc, attn), eager)


def test_emca_layouts(compiled):
    """K value maps stacked k-major on the head axis share one set of locations and weights."""
    k, m = 3, 2
    value, shapes, starts, loc, attn = make_inputs(n=2, lq=4, m=k * m, d=4, loc_heads=m)
    grad_out = torch.randn(2, 4, k * m * 4, dtype=torch.float64)
    rep = (loc.repeat(1, 1, k, 1, 1, 1), attn.repeat(1, 1, k, 1, 1))
    out_r, grads_r = _grads(ms_deform_attn_pytorch, (value, shapes, starts) + rep, grad_out)
    # (a) location heads dividing the value heads: no expansion at all
    out_c, grads_c = _grads(compiled.ms_deform_attn_forward, (value, shapes, starts, loc, attn), grad_out)
    torch.testing.assert_close(out_c, out_r)
    torch.testing.assert_close(grads_c[0], grads_r[0])
    torch.testing.assert_close(grads_c[1], grads_r[1].view(2, 4, k, m, 3, 2, 2).sum(2))
    torch.testing.assert_close(grads_c[2], grads_r[2].view(2, 4, k, m, 3, 2).sum(2))
    # (b) stride-0 expanded views (every head shares the locations) are read in place
    loc1, attn1 = loc[:, :, :1], attn[:, :, :1]
    loc_x, attn_x = loc1.expand(-1, -1, k * m, -1, -1, -1), attn1.expand(-1, -1, k * m, -1, -1)
    assert loc_x.stride(2) == 0 and attn_x.stride(2) == 0
    out_x = compiled.ms_deform_attn_forward(value, shapes, starts, loc_x, attn_x)
    torch.testing.assert_close(out_x, ms_deform_attn_pytorch(value, shapes, starts, loc_x.contiguous(),
                                                             attn_x.contiguous()))
    loc_g = loc1.clone().requires_grad_()
    out_g = compiled.ms_deform_attn_forward(value, shapes, starts, loc_g.expand(-1, -1, k * m, -1, -1, -1), attn_x)
    (g,) = torch.autograd.grad(out_g, loc_g, grad_out)
    loc_r = loc1.clone().requires_grad_()
    out_rr = ms_deform_attn_pytorch(value, shapes, starts, loc_r.expand(-1, -1, k * m, -1, -1, -1), attn_x)
    (g_r,) = torch.autograd.grad(out_rr, loc_r, grad_out)
    torch.testing.assert_close(g, g_r)
