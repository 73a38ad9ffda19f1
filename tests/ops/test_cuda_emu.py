"""The CUDA kernels (msda_cuda_kernels.cuh, unchanged) run on the CPU under the SIMT emulator.

torch.ops.msda_emu (the `emu` fixture) is the CUDA op's device code built by the host compiler
(models/dino/ops/_emu.py):
warps run as 32 lanes that meet at every __shfl_xor_sync, blocks in a seeded shuffled order. The cases
are those of the CUDA tests (tests/ops/msda_cases.py) and more: every group width (channels per head
1..256), the vector and scalar paths, both index widths (int32, int64) and both architectures' atomics
(sm_80 scalar, sm_90 float4), warps and blocks left partly filled, the EMCA head layout, padded, strided,
misaligned and zero-sized inputs, points on and off the borders, NaN and far-away points.
The first tests check the emulator's own rules.
"""
import pytest
import torch

from models.dino.ops import ms_deform_attn_pytorch, sass_report
from tests.ops import msda_cases as cases
from tests.ops.conftest import make_inputs

D_VALUES = cases.D_VALUES
# (architecture of the backward's device code, index width): the default is (900, 32)
VARIANTS = [(800, 32), (800, 64), (900, 64)]


@pytest.fixture
def variant(request, emu, monkeypatch):
    """Runs a test with the backward compiled for `arch` and the index arithmetic in `bits` bits."""
    arch, bits = request.param
    emu.set_arch(arch)
    monkeypatch.setenv("MSDA_FORCE_INDEX64", "1" if bits == 64 else "0")
    yield arch, bits
    emu.set_arch(900)


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


def test_emu_vector_load_reads_and_faults_when_misaligned(emu):
    """The kernels' 16-byte loads (MSDA_VECTOR_ACCESS) fail the launch off the 16-byte grid, as on a GPU
    (the host CPU would read it): a plan that let a misaligned tensor onto the vector path fails."""
    assert emu.shim_selftest("vector_load", 0)[:2].view(torch.float32).tolist() == [4, 5, 6, 7]
    with pytest.raises(RuntimeError, match=r"16-byte vector access at .* not 16-byte aligned"):
        emu.shim_selftest("vector_load_misaligned", 0)


def test_emu_float4_atomic_adds_and_faults_when_misaligned(emu):
    got = emu.shim_selftest("float4_atomic", 0)[:4].view(torch.float32)  # 8 floats; the atomic hits 4..7
    assert got.tolist() == [0, 0, 0, 0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError, match=r"atomicAdd\(float4\*\) at .* not 16-byte aligned"):
        emu.shim_selftest("float4_atomic_misaligned", 0)


# ---- the msda kernels ----

def test_emu_plan_picks_path_chunk_width_index_width_and_group(emu, monkeypatch):
    """The host's choice of kernel variant: 16-byte vectors when D allows and pointers are aligned, else
    scalar chunks (forward: the widest of 8 (fp16 / bf16), 4, 2, 1 <= D; backward: 4, masked, or 1 for
    D = 1); int32 unless forced; lanes per task (forward: one per chunk up to 32, any number; backward:
    a power of two); locations copied only when not in (x, y) pairs."""
    def plan(d, dtype=torch.float32, transform=None, backward=False):
        (value, shapes, starts, loc, attn), _ = cases.odd_problem(d)
        value, loc, attn = value.to(dtype), loc.float(), attn.float()
        if transform:
            value, loc, attn = transform(value, loc, attn)
        return emu.plan_of(value, shapes, starts, loc, attn, backward)

    monkeypatch.delenv("MSDA_FORCE_INDEX64", raising=False)
    both = {  # (d, dtype, transform) -> forward's plan, backward's plan (without " loc in place")
        (32, torch.float32, None): ("int32 vector V=4 G=8", "int32 vector V=4 G=8"),
        (32, torch.bfloat16, None): ("int32 vector V=8 G=4", "int32 vector V=8 G=4"),
        (256, torch.float32, None): ("int32 vector V=4 G=32", "int32 vector V=4 G=32"),  # two passes of 128
        (8, torch.float16, None): ("int32 vector V=8 G=1", "int32 vector V=8 G=1"),
        (1, torch.float32, None): ("int32 scalar V=1 G=1", "int32 scalar V=1 G=1"),
        (2, torch.float32, None): ("int32 scalar V=2 G=1", "int32 scalar V=4 G=1"),
        (3, torch.bfloat16, None): ("int32 scalar V=2 G=2", "int32 scalar V=4 G=1"),
        (5, torch.float32, None): ("int32 scalar V=4 G=2", "int32 scalar V=4 G=2"),
        (6, torch.float16, None): ("int32 scalar V=4 G=2", "int32 scalar V=4 G=2"),
        (30, torch.bfloat16, None): ("int32 scalar V=8 G=4", "int32 scalar V=4 G=8"),
        (33, torch.float32, None): ("int32 scalar V=4 G=9", "int32 scalar V=4 G=16"),
        (71, torch.float16, None): ("int32 scalar V=8 G=9", "int32 scalar V=4 G=32"),
        (300, torch.float32, None): ("int32 vector V=4 G=25", "int32 vector V=4 G=32"),  # 75 chunks, 3 passes
        (32, torch.float32, cases.misaligned_value): ("int32 scalar V=4 G=8", "int32 scalar V=4 G=8"),
        (32, torch.bfloat16, cases.misaligned_value): ("int32 scalar V=8 G=4", "int32 scalar V=4 G=8"),
    }
    for (d, dtype, transform), want in both.items():
        got = tuple(plan(d, dtype, transform, backward) for backward in (False, True))
        assert got == tuple(w + " loc in place" for w in want), (d, dtype)
    assert plan(32, transform=cases.split_locations) == "int32 vector V=4 G=8 loc copied"
    assert plan(32, transform=cases.strided_everything) == "int32 vector V=4 G=8 loc in place"
    monkeypatch.setenv("MSDA_FORCE_INDEX64", "1")
    assert plan(32) == "int64 vector V=4 G=8 loc in place"
    assert plan(5, backward=True) == "int64 scalar V=4 G=2 loc in place"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_emu_plan_matches_the_sass_reports_copy(emu, dtype):
    """sass_report.plan_for (the executed-work table of README) follows plan_launch for every D <= 80."""
    name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}[dtype]
    for d in range(1, 81):
        (value, shapes, starts, loc, attn), _ = cases.odd_problem(d)
        value, loc, attn = value.to(dtype), loc.to(value.dtype if dtype == torch.float64 else torch.float32), \
            attn.to(torch.float64 if dtype == torch.float64 else torch.float32)
        for kernel in ("forward", "backward"):
            path, v, g, _ = sass_report.plan_for(d, name, kernel)
            got = emu.plan_of(value, shapes, starts, loc, attn, kernel == "backward")
            assert got == f"int32 {path} V={v} G={g} loc in place", (d, kernel)


@pytest.mark.parametrize("d", D_VALUES)
def test_emu_gradcheck_fp64(emu, d):
    value, shapes, starts, loc, attn = make_inputs(n=2, lq=3, m=2, d=d, shapes=((3, 4), (2, 2)), p=2, seed=d)
    inputs = (value.requires_grad_(), shapes, starts, loc.requires_grad_(), attn.requires_grad_())
    # the full Jacobian for 1 and 2 channels, random projections (fast mode) beyond; every launch
    # shuffles the blocks anew, so the atomicAdds of two backward calls differ in the last bits
    assert torch.autograd.gradcheck(emu.ms_deform_attn_forward, inputs, eps=1e-6, atol=1e-5, nondet_tol=1e-12,
                                    fast_mode=d > 2)


@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
@pytest.mark.parametrize("d", [2, 8, 256])
def test_emu_gradcheck_fp64_variants(emu, variant, d):
    """The full Jacobian (2 channels) or random projections of it, on the other architectures' and
    the int64 device code; D = 8 and 256 run the fp64 vector path (2 channels per access)."""
    value, shapes, starts, loc, attn = make_inputs(n=2, lq=3, m=2, d=d, shapes=((3, 4), (2, 2)), p=2, seed=d)
    inputs = (value.requires_grad_(), shapes, starts, loc.requires_grad_(), attn.requires_grad_())
    assert torch.autograd.gradcheck(emu.ms_deform_attn_forward, inputs, eps=1e-6, atol=1e-5, nondet_tol=1e-12,
                                    fast_mode=d > 2)


@pytest.mark.parametrize("dtype,tol", cases.DTYPES)
@pytest.mark.parametrize("d", D_VALUES)
def test_emu_matches_reference(emu, d, dtype, tol):
    # 27 (n, query, head) tasks: warps of 1, 2, 4, 8 and 16-lane groups end part-filled (27 * G lanes),
    # and the last block of 256 threads is partly idle (replay lanes) for every G
    cases.check_against_reference(emu.ms_deform_attn_forward, cases.odd_problem(d), dtype, tol)


@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
@pytest.mark.parametrize("dtype,tol", cases.DTYPES)
@pytest.mark.parametrize("d", [5, 32, 256])
def test_emu_variants_match_reference(emu, variant, d, dtype, tol):
    cases.check_against_reference(emu.ms_deform_attn_forward, cases.odd_problem(d), dtype, tol)


@pytest.mark.parametrize("transform", sorted(cases.TRANSFORMS))
@pytest.mark.parametrize("dtype,tol", cases.DTYPES[:2])
@pytest.mark.parametrize("d", [8, 32])
def test_emu_views_match_reference(emu, d, dtype, tol, transform):
    """Misaligned value (scalar path), x / y in separate planes (copied to pairs), strided views."""
    cases.check_against_reference(emu.ms_deform_attn_forward, cases.odd_problem(d), dtype, tol,
                                  transform=cases.TRANSFORMS[transform])


@pytest.mark.parametrize("dtype,tol", cases.DTYPES)
@pytest.mark.parametrize("d", [8, 32, 256])
def test_emu_padded_value(emu, d, dtype, tol):
    cases.check_against_reference(emu.ms_deform_attn_forward, cases.padded_problem(d), dtype, tol)


@pytest.mark.parametrize("variant", [(900, 32)] + VARIANTS, indirect=True)
def test_emu_index_widths_and_architectures_agree(emu, variant):
    """fp64: the int32 / int64 and sm_80 / sm_90 device code give the default's results to 1e-12."""
    problem = cases.odd_problem(32)
    got = cases.grads_of(emu.ms_deform_attn_forward, *problem)
    emu.set_arch(900)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MSDA_FORCE_INDEX64", "0")
        want = cases.grads_of(emu.ms_deform_attn_forward, *problem)
    for a, b in zip([got[0], *got[1]], [want[0], *want[1]]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", [(900, 32)] + VARIANTS, indirect=True)
def test_emu_nan_and_far_points_read_nothing(emu, variant):
    cases.check_nan_and_far_points(emu.ms_deform_attn_forward)


@pytest.mark.parametrize("d", [32, 71, 256])
def test_emu_runs_the_cuda_test_case(emu, d):
    """tests/ops/test_cuda.py's larger problem, fp32: 198 tasks; D = 71 and 256 take several passes."""
    args, grad_out = cases.cuda_test_problem(d)
    out, grads = cases.grads_of(emu.ms_deform_attn_forward, args, grad_out)
    ref, ref_grads = cases.grads_of(ms_deform_attn_pytorch, args, grad_out)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # the location gradient sums D value differences scaled by the map width (23): fp32 rounding
    # reaches 1e-4 of it, and the emulator's shuffled atomicAdd order moves the last bits per run
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


def test_emu_agrees_with_the_cpu_kernel_and_across_schedules(emu, compiled):
    args = make_inputs(n=2, lq=5, m=2, d=16, shapes=((6, 4), (3, 2)), p=3, dtype=torch.float64, seed=3)
    grad_out = torch.randn(2, 5, 32, dtype=torch.float64)
    cpu = cases.grads_of(compiled.ms_deform_attn_forward, args, grad_out)
    emu.set_seed(1)
    first = cases.grads_of(emu.ms_deform_attn_forward, args, grad_out)
    emu.set_seed(2)  # other block / warp / lane orders: the atomicAdds land in another order
    second = cases.grads_of(emu.ms_deform_attn_forward, args, grad_out)
    emu.set_seed(0)
    for a, b, c in zip([cpu[0], *cpu[1]], [first[0], *first[1]], [second[0], *second[1]]):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(c, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("d", [5, 32, 256])
def test_emu_emca_layout(emu, d, dtype):
    """EMCA: K value maps stacked k-major on the head axis share the locations of M heads (weights a
    stride-0 expansion); D = 256 is the sample-first call."""
    k = 3
    (value, shapes, starts, loc, attn), grad_out = cases.emca_problem(d, k=k)
    args = [cases.moved(t, dtype=dtype) for t in (value, shapes, starts, loc, attn)]
    assert args[4].stride(2) == 0  # the weights are read in place
    out, grads = cases.grads_of(emu.ms_deform_attn_forward, args, grad_out.to(dtype))
    ref, ref_grads = cases.emca_reference((value, shapes, starts, loc, attn), grad_out, k)
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r, rtol=tol, atol=tol)


def test_emu_stride0_and_noncontiguous_inputs(emu):
    value, shapes, starts, loc, attn = make_inputs(n=2, lq=4, m=3, d=6, seed=11)
    grad_out = torch.randn(2, 4, 18, dtype=torch.float64)
    ref, ref_grads = cases.grads_of(ms_deform_attn_pytorch, (value, shapes, starts, loc, attn), grad_out)
    # value a strided slice, locations / weights views of transposed storage, grad_out transposed
    value_nc = torch.stack([value, torch.zeros_like(value)], -1)[..., 0]
    loc_nc = loc.transpose(0, 1).contiguous().transpose(0, 1)
    attn_nc = attn.permute(4, 0, 1, 2, 3).contiguous().permute(1, 2, 3, 4, 0)
    go_nc = grad_out.transpose(0, 1).contiguous().transpose(0, 1)
    assert not any(t.is_contiguous() for t in (value_nc, loc_nc, attn_nc, go_nc))
    out, grads = cases.grads_of(emu.ms_deform_attn_forward, (value_nc, shapes, starts, loc_nc, attn_nc), go_nc)
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
    _, ref_x = cases.grads_of(ms_deform_attn_pytorch, (value, shapes, starts, loc_x.contiguous(), attn_x.contiguous()),
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
    out, grads = cases.grads_of(emu.ms_deform_attn_forward, (value, shapes, starts, loc, attn), grad_out)
    ref, ref_grads = cases.grads_of(ms_deform_attn_pytorch, (value, shapes, starts, loc, attn), grad_out)
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
