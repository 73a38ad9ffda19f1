"""The CUDA kernel on a GPU: the cases of the emulator tests (tests/ops/msda_cases.py) against the
float64 reference in fp32 / fp16 / bf16, both index widths, views, padding, EMCA's layout, NaN points,
an fp64 gradcheck, and agreement with the emulator running the same device code.

Skipped without a GPU; with one, a CUDA kernel that does not build or load fails them
(the `compiled_cuda` fixture).
"""
import pytest
import torch

from tests.ops import msda_cases as cases
from tests.ops.conftest import make_inputs


@pytest.fixture(params=[32, 64], ids=["int32", "int64"])
def index_bits(request, monkeypatch):
    """The launch's index arithmetic: int32 (the default for these sizes) or int64 (forced)."""
    monkeypatch.setenv("MSDA_FORCE_INDEX64", "1" if request.param == 64 else "0")
    return request.param


@pytest.mark.parametrize("dtype,tol", cases.DTYPES)
@pytest.mark.parametrize("d", cases.D_VALUES)
def test_cuda_matches_reference(compiled_cuda, index_bits, d, dtype, tol):
    cases.check_against_reference(compiled_cuda.ms_deform_attn_forward, cases.odd_problem(d), dtype, tol,
                                  device="cuda")


@pytest.mark.parametrize("dtype,tol", cases.DTYPES)
@pytest.mark.parametrize("d", [1, 5, 16, 32, 33, 71, 256])
def test_cuda_larger_problem_matches_reference(compiled_cuda, d, dtype, tol):
    cases.check_against_reference(compiled_cuda.ms_deform_attn_forward, cases.cuda_test_problem(d, torch.float64),
                                  dtype, tol, device="cuda")


@pytest.mark.parametrize("transform", sorted(cases.TRANSFORMS))
@pytest.mark.parametrize("dtype,tol", cases.DTYPES[:2])
@pytest.mark.parametrize("d", [8, 32])
def test_cuda_views_match_reference(compiled_cuda, d, dtype, tol, transform):
    cases.check_against_reference(compiled_cuda.ms_deform_attn_forward, cases.odd_problem(d), dtype, tol,
                                  device="cuda", transform=cases.TRANSFORMS[transform])


@pytest.mark.parametrize("dtype,tol", cases.DTYPES)
@pytest.mark.parametrize("d", [8, 32, 256])
def test_cuda_padded_value(compiled_cuda, d, dtype, tol):
    cases.check_against_reference(compiled_cuda.ms_deform_attn_forward, cases.padded_problem(d), dtype, tol,
                                  device="cuda")


def test_cuda_nan_and_far_points_read_nothing(compiled_cuda, index_bits):
    cases.check_nan_and_far_points(compiled_cuda.ms_deform_attn_forward, device="cuda")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("d", [5, 32, 256])
def test_cuda_emca_layout(compiled_cuda, d, dtype):
    k = 3
    (value, shapes, starts, loc, attn), grad_out = cases.emca_problem(d, k=k)
    args = [cases.moved(t, "cuda", dtype) for t in (value, shapes, starts, loc, attn)]
    assert args[4].stride(2) == 0  # the weights are read in place
    out, grads = cases.grads_of(compiled_cuda.ms_deform_attn_forward, args, grad_out.to(dtype).cuda())
    ref, ref_grads = cases.emca_reference((value, shapes, starts, loc, attn), grad_out, k)
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(out.cpu().double(), ref, rtol=tol, atol=tol)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.cpu().double(), r, rtol=tol, atol=tol)


@pytest.mark.parametrize("d", [2, 8, 256])
def test_cuda_gradcheck_fp64(compiled_cuda, index_bits, d):
    value, shapes, starts, loc, attn = [t.cuda() for t in make_inputs(n=2, lq=3, m=2, d=d, shapes=((3, 4), (2, 2)),
                                                                        p=2, seed=d)]
    inputs = (value.requires_grad_(), shapes, starts, loc.requires_grad_(), attn.requires_grad_())
    assert torch.autograd.gradcheck(compiled_cuda.ms_deform_attn_forward, inputs, eps=1e-6, atol=1e-5,
                                    nondet_tol=1e-12, fast_mode=d > 2)


@pytest.mark.parametrize("d", cases.D_VALUES)
def test_cuda_matches_emulator(compiled_cuda, emu, index_bits, d):
    """The GPU and the emulator run the same device code: partial warps, EMCA heads, stride-0 weights."""
    emu.set_arch(900 if torch.cuda.get_device_capability()[0] >= 9 else 800)
    try:
        (value, shapes, starts, loc, attn), grad_out = cases.emca_problem(d, seed=d)
        args = [cases.moved(t, dtype=torch.float32) for t in (value, shapes, starts, loc, attn)]
        on_cpu = [emu.ms_deform_attn_forward(*args)] + list(emu.ms_deform_attn_backward(*args, grad_out.float()))
        cuda_args = [cases.moved(t, "cuda") for t in args]
        on_gpu = [compiled_cuda.ms_deform_attn_forward(*cuda_args)] + list(
            compiled_cuda.ms_deform_attn_backward(*cuda_args, grad_out.float().cuda()))
    finally:
        emu.set_arch(900)
    for c, g in zip(on_cpu, on_gpu):
        torch.testing.assert_close(g.cpu(), c, rtol=1e-5, atol=1e-5)
