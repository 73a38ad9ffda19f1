"""The CUDA kernels (msda_cuda_kernels.cuh, unchanged) run on the CPU under the SIMT emulator.

torch.ops.msda_emu (the `emu` fixture) is the CUDA op's device code built by the host compiler
(models/dino/ops/_emu.py):
warps run as 32 lanes that meet at every __shfl_xor_sync, blocks in a seeded shuffled order. The cases
are those of the CUDA tests and more: every group width (channels per head 1..71), warps and blocks
left partly filled, the EMCA head layout, strided and zero-sized inputs, points on and off the borders.
The first tests check the emulator's own rules.
"""
import pytest
import torch

from models.dino.ops import ms_deform_attn_pytorch
from tests.ops.conftest import make_inputs

D_VALUES = [1, 2, 5, 8, 16, 30, 32, 33, 71]


# ---- the emulator's rules ----

def ptx_bfly(lane, lane_mask, width):
    """PTX ISA, shfl.sync mode .bfly, with c = ((32 - width) << 8) | 0x1f as __shfl_xor_sync passes it."""
    c = ((32 - width) << 8) | 0x1F
    cval, segmask = c & 0x1F, (c >> 8) & 0x1F
    max_lane = (lane & segmask) | (cval & ~segmask)
    j = lane ^ lane_mask
    return j if j <= max_lane else lane


def test_emu_shuffle_follows_ptx_butterfly(emu):
    got = emu.shim_selftest("bfly", 0)  # (width 1..32, laneMask 0..31, lane)
    want = torch.tensor([[[ptx_bfly(lane, lm, 1 << w) for lane in range(32)] for lm in range(32)] for w in range(6)])
    assert torch.equal(got, want)
    # width 8: laneMask 1 swaps neighbours; laneMask 8 leaves the segment upwards -> own value,
    # but lane 9 (segment 8..15) with laneMask 8 reads lane 1 (PTX only clamps j <= maxLane)
    assert got[3, 1, :4].tolist() == [1, 0, 3, 2]
    assert got[3, 8, 0] == 0 and got[3, 8, 9] == 1


def test_emu_partial_masks(emu):
    got = emu.shim_selftest("bfly_mask:0x0000ffff:1:32", 0)
    assert got[:16].tolist() == [i ^ 1 for i in range(16)] and (got[16:32] == -1).all()
    halves = emu.shim_selftest("halves", 0)  # two masks, two call sites, at the same time
    assert halves[:32].tolist() == [i ^ 1 for i in range(16)] + [i ^ 2 for i in range(16, 32)]


@pytest.mark.parametrize("case,message", [
    ("divergent", "different call sites: lane"),
    ("early_exit", r"lane\(s\) 5 returned while lane\(s\) 0,1,2,3,4,6,"),
    ("partial_block", "names lanes that do not exist"),
    ("bfly_mask:0x0000ffff:16:32", "reads lane 16 .* not in the shuffle's mask"),
    ("bfly_mask:0xffffffff:1:3", "width 3 .*power of two"),
])
def test_emu_rule_breaks_abort_with_a_message(emu, case, message):
    with pytest.raises(RuntimeError, match=f"simt emulator, block 0, warp [01]: .*{message}"):
        emu.shim_selftest(case, 0)


def test_emu_blocks_run_in_seeded_shuffled_order(emu):
    orders = [emu.shim_selftest("order", seed) for seed in (1, 1, 2)]
    first = orders[0][:16].tolist()
    assert sorted(first) == list(range(16)) and first != list(range(16))
    assert torch.equal(orders[0], orders[1]) and not torch.equal(orders[0], orders[2])
    assert orders[0][16:17].view(torch.float64).item() == 16 * 96  # atomicAdd from every thread


# ---- the msda kernels ----

def _run(fwd, args, grad_out):
    """Output and (value, location, weight) gradients of fwd through autograd."""
    value, shapes, starts, loc, attn = [a.detach().clone().requires_grad_(a.is_floating_point()) for a in args]
    out = fwd(value, shapes, starts, loc, attn)
    return out, torch.autograd.grad(out, (value, loc, attn), grad_out)


@pytest.mark.parametrize("d", D_VALUES)
def test_emu_gradcheck_fp64(emu, d):
    value, shapes, starts, loc, attn = make_inputs(n=2, lq=3, m=2, d=d, shapes=((3, 4), (2, 2)), p=2, seed=d)
    inputs = (value.requires_grad_(), shapes, starts, loc.requires_grad_(), attn.requires_grad_())
    # the full Jacobian for 1 and 2 channels, random projections (fast mode) beyond; every launch
    # shuffles the blocks anew, so the atomicAdds of two backward calls differ in the last bits
    assert torch.autograd.gradcheck(emu.ms_deform_attn_forward, inputs, eps=1e-6, atol=1e-5, nondet_tol=1e-12,
                                    fast_mode=d > 2)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 5e-2), (torch.float16, 2e-2)])
@pytest.mark.parametrize("d", D_VALUES)
def test_emu_matches_reference(emu, d, dtype, tol):
    # 27 (n, query, head) tasks: warps of 1, 2, 8 and 16-lane groups end part-filled (27 * G lanes),
    # and the last block of 256 threads is partly idle (replay lanes) for every G
    value, shapes, starts, loc, attn = make_inputs(n=3, lq=3, m=3, d=d, dtype=torch.float32,
                                                   shapes=((5, 7), (2, 3), (1, 1)), p=2, seed=d)
    grad_out = torch.randn(3, 3, 3 * d, generator=torch.Generator().manual_seed(d)).to(dtype)
    out, grads = _run(emu.ms_deform_attn_forward, (value.to(dtype), shapes, starts, loc, attn), grad_out)
    ref, ref_grads = _run(ms_deform_attn_pytorch, (value.to(dtype).float(), shapes, starts, loc, attn),
                          grad_out.float())
    assert out.dtype == dtype and grads[0].dtype == dtype and grads[1].dtype == torch.float32
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.float(), r, rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("d", [32, 71])
def test_emu_runs_the_cuda_test_case(emu, d):
    """tests/ops/test_cuda.py's problem, fp32: 198 full warps, 3 lanes' worth of channels for D=71."""
    args = make_inputs(n=3, lq=33, m=2, d=d, dtype=torch.float32, shapes=((17, 23), (5, 3), (1, 1)), p=4)
    grad_out = torch.randn(3, 33, 2 * d, generator=torch.Generator().manual_seed(d))
    out, grads = _run(emu.ms_deform_attn_forward, args, grad_out)
    ref, ref_grads = _run(ms_deform_attn_pytorch, args, grad_out)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # the location gradient sums D value differences scaled by the map width (23): fp32 rounding
    # reaches 1e-4 of it, and the emulator's shuffled atomicAdd order moves the last bits per run
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


def test_emu_agrees_with_the_cpu_kernel_and_across_schedules(emu, compiled):
    args = make_inputs(n=2, lq=5, m=2, d=16, shapes=((6, 4), (3, 2)), p=3, dtype=torch.float64, seed=3)
    grad_out = torch.randn(2, 5, 32, dtype=torch.float64)
    cpu = _run(compiled.ms_deform_attn_forward, args, grad_out)
    emu.set_seed(1)
    first = _run(emu.ms_deform_attn_forward, args, grad_out)
    emu.set_seed(2)  # other block / warp / lane orders: the atomicAdds land in another order
    second = _run(emu.ms_deform_attn_forward, args, grad_out)
    emu.set_seed(0)
    for a, b, c in zip([cpu[0], *cpu[1]], [first[0], *first[1]], [second[0], *second[1]]):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(c, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d", [5, 32])
def test_emu_emca_layout(emu, d):
    """EMCA: K value maps stacked k-major on the head axis share the locations of M heads."""
    k, m = 3, 2
    value, shapes, starts, loc, attn = make_inputs(n=2, lq=3, m=k * m, d=d, loc_heads=m, seed=7)
    grad_out = torch.randn(2, 3, k * m * d, dtype=torch.float64)
    out, grads = _run(emu.ms_deform_attn_forward, (value, shapes, starts, loc, attn), grad_out)
    rep = (loc.repeat(1, 1, k, 1, 1, 1), attn.repeat(1, 1, k, 1, 1))
    ref, ref_grads = _run(ms_deform_attn_pytorch, (value, shapes, starts) + rep, grad_out)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(grads[0], ref_grads[0])
    torch.testing.assert_close(grads[1], ref_grads[1].view(2, 3, k, m, 3, 2, 2).sum(2))
    torch.testing.assert_close(grads[2], ref_grads[2].view(2, 3, k, m, 3, 2).sum(2))


def test_emu_stride0_and_noncontiguous_inputs(emu):
    value, shapes, starts, loc, attn = make_inputs(n=2, lq=4, m=3, d=6, seed=11)
    grad_out = torch.randn(2, 4, 18, dtype=torch.float64)
    ref, ref_grads = _run(ms_deform_attn_pytorch, (value, shapes, starts, loc, attn), grad_out)
    # value a strided slice, locations / weights views of transposed storage, grad_out transposed
    value_nc = torch.stack([value, torch.zeros_like(value)], -1)[..., 0]
    loc_nc = loc.transpose(0, 1).contiguous().transpose(0, 1)
    attn_nc = attn.permute(4, 0, 1, 2, 3).contiguous().permute(1, 2, 3, 4, 0)
    go_nc = grad_out.transpose(0, 1).contiguous().transpose(0, 1)
    assert not any(t.is_contiguous() for t in (value_nc, loc_nc, attn_nc, go_nc))
    out, grads = _run(emu.ms_deform_attn_forward, (value_nc, shapes, starts, loc_nc, attn_nc), go_nc)
    torch.testing.assert_close(out, ref)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)
    # stride 0: every head reads the locations and weights of head 0, in place
    loc_x, attn_x = loc[:, :, :1].expand(-1, -1, 3, -1, -1, -1), attn[:, :, :1].expand(-1, -1, 3, -1, -1)
    assert loc_x.stride(2) == 0 and attn_x.stride(2) == 0
    out_x = emu.ms_deform_attn_forward(value, shapes, starts, loc_x, attn_x)
    torch.testing.assert_close(out_x, ms_deform_attn_pytorch(value, shapes, starts, loc_x.contiguous(),
                                                             attn_x.contiguous()))
    grads_x = emu.ms_deform_attn_backward(value, shapes, starts, loc_x, attn_x, grad_out)
    _, ref_x = _run(ms_deform_attn_pytorch, (value, shapes, starts, loc_x.contiguous(), attn_x.contiguous()),
                    grad_out)
    for g, r in zip(grads_x, ref_x):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("n,lq,d", [(0, 3, 4), (2, 0, 4), (2, 3, 0)])
def test_emu_zero_sized_inputs(emu, n, lq, d):
    value, shapes, starts, loc, attn = make_inputs(n=max(n, 1), lq=max(lq, 1), m=2, d=max(d, 1))
    value, loc, attn = value[:n, :, :, :d], loc[:n, :lq], attn[:n, :lq]
    out = emu.ms_deform_attn_forward(value, shapes, starts, loc, attn)
    assert out.shape == (n, lq, 2 * d)
    grads = emu.ms_deform_attn_backward(value, shapes, starts, loc, attn, torch.ones_like(out))
    assert [g.shape for g in grads] == [value.shape, loc.shape, attn.shape]
    assert all((g == 0).all() for g in grads)


def test_emu_points_on_and_outside_borders(emu):
    value, shapes, starts, loc, attn = make_inputs(n=1, lq=4, m=1, d=5, shapes=((4, 5), (1, 1)), p=4)
    special = torch.tensor([0.0, 1.0, -0.3, 1.3, 0.5 / 5, 4.5 / 5, -0.1, 1.0 - 1e-9], dtype=torch.float64)
    loc.view(-1)[: 8 * 8] = special.repeat(8)
    loc[0, 1] = 5.0  # entirely outside: contributes nothing, gets zero gradients
    grad_out = torch.randn(1, 4, 5, dtype=torch.float64)
    out, grads = _run(emu.ms_deform_attn_forward, (value, shapes, starts, loc, attn), grad_out)
    ref, ref_grads = _run(ms_deform_attn_pytorch, (value, shapes, starts, loc, attn), grad_out)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert out[0, 1].abs().max() == 0 and (grads[1][0, 1] == 0).all() and (grads[2][0, 1] == 0).all()
    torch.testing.assert_close(grads[0], ref_grads[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grads[2], ref_grads[2], rtol=1e-10, atol=1e-10)
    # the location gradient is one-sided at kinks (pixel-centre lines); compare elsewhere
    size = torch.tensor([[5.0, 4.0], [1.0, 1.0]], dtype=torch.float64)[None, None, None, :, None, :]
    pix = loc * size - 0.5
    smooth = (pix - pix.round()).abs() > 1e-9
    torch.testing.assert_close(grads[1][smooth], ref_grads[1][smooth], rtol=1e-10, atol=1e-10)
    assert smooth.sum() > 20 and torch.isfinite(grads[1]).all()


def test_emu_rejects_bad_input(emu):
    value, shapes, starts, loc, attn = make_inputs(dtype=torch.float32)
    # levels past value's tokens: read out of bounds before the check (the ASan build caught it)
    with pytest.raises(RuntimeError, match=r"level 0 \(6 x 4 starting at token 0\) does not fit in value's 20 tokens"):
        emu.ms_deform_attn_forward(value[:, :20].clone(), shapes, starts, loc, attn)
    with pytest.raises(RuntimeError, match="level 1 .* does not fit"):
        emu.ms_deform_attn_backward(value, shapes, starts + 5, loc, attn, torch.ones(2, 5, 8))
    with pytest.raises(RuntimeError, match="sampling_locations and attention_weights must be Float"):
        emu.ms_deform_attn_forward(value, shapes, starts, loc.double(), attn)
    with pytest.raises(RuntimeError, match="heads"):
        emu.ms_deform_attn_forward(value, shapes, starts, torch.cat([loc] * 3, 2)[:, :, :3],
                                   torch.cat([attn] * 3, 2)[:, :, :3])


@pytest.mark.parametrize("formulation", ["project_first", "sample_first"])
def test_emu_runs_emcas_calls(emu, monkeypatch, formulation):
    """AugDETR's EMCA as it calls the op (the K maps on the batch axis with stride-0 locations,
    gated weights, the one-channel beta call, heads folded into the queries): the CUDA device
    code gives the reference backend's output and gradients."""
    from models.dino.augdetr import emca as emca_mod
    torch.manual_seed(5)
    k, c = 3, 16
    m = emca_mod.EncoderMixingAttention(d_model=c, n_levels=2, n_heads=2, n_points=2, num_mixed=k).double()
    m.formulation = formulation
    shapes = torch.tensor([[4, 5], [2, 3]])
    starts = torch.tensor([0, 20])
    query = torch.randn(2, 7, c, dtype=torch.float64)
    ref = torch.rand(2, 7, 2, 2, dtype=torch.float64)
    maps = torch.randn(k, 2, 26, c, dtype=torch.float64)
    mask = torch.zeros(2, 26, dtype=torch.bool)
    mask[1, 15:20] = mask[1, 24:] = True

    def run(op):
        monkeypatch.setattr(emca_mod, "ms_deform_attn", op)
        m.zero_grad()
        x = maps.clone().requires_grad_()
        out = m(query, ref, x, shapes, starts, mask)
        out.backward(torch.ones_like(out))
        return [out, x.grad] + [p.grad.clone() for p in m.parameters()]

    got, want = run(emu.ms_deform_attn_forward), run(ms_deform_attn_pytorch)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)
