"""CUDA kernel vs the reference in fp32 / fp16 / bf16, forward and backward (skipped without a GPU)."""
import pytest
import torch

from models.dino.ops import ms_deform_attn_pytorch
from tests.ops.conftest import make_inputs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("d", [32, 71])
def test_cuda_matches_reference(compiled, dtype, tol, d):
    from models.dino.ops import _build
    if not _build.has_kernel("cuda"):
        pytest.skip("the loaded msda library has no CUDA kernel")
    value, shapes, starts, loc, attn = [t.cuda() for t in make_inputs(n=3, lq=33, m=2, d=d, dtype=torch.float32,
                                                                        shapes=((17, 23), (5, 3), (1, 1)), p=4)]
    grad_out = torch.randn(3, 33, 2 * d, device="cuda")
    leaves = [value.to(dtype).requires_grad_(), loc.clone().requires_grad_(), attn.clone().requires_grad_()]
    out = compiled.ms_deform_attn_forward(leaves[0], shapes, starts, leaves[1], leaves[2])
    grads = torch.autograd.grad(out, leaves, grad_out.to(dtype))
    ref_leaves = [value.to(dtype).float().requires_grad_(), loc.clone().requires_grad_(), attn.clone().requires_grad_()]
    ref = ms_deform_attn_pytorch(ref_leaves[0], shapes, starts, ref_leaves[1], ref_leaves[2])
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad_out.to(dtype).float())
    assert out.dtype == dtype and grads[0].dtype == dtype
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.float(), r, rtol=tol, atol=tol * 10)
