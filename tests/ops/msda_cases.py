"""Problems and checks shared by the CUDA kernel's tests: on a GPU (test_cuda.py) and on the CPU under
the SIMT emulator (test_cuda_emu.py), so that both run the same cases.

Each case is a float64 problem (value, spatial_shapes, level_start_index, sampling_locations,
attention_weights) plus grad_output; `check_against_reference` runs an op on it in a dtype, on a
device, optionally through a view transform (misaligned storage, x / y in separate planes, ...),
and compares output and gradients with the float64 PyTorch reference.
"""
import torch

from models.dino.ops import ms_deform_attn_pytorch
from tests.ops.conftest import make_inputs

# channels per head: 1 lane (1), part-filled groups (2, 5, 30, 33, 71), DINO's 32, the sizes of the
# issue (8, 16, 64) and EMCA's sample-first 256 (several channel passes per lane in fp32 and fp64)
D_VALUES = [1, 2, 5, 8, 16, 30, 32, 33, 64, 71, 256]
DTYPES = [(torch.float32, 1e-5), (torch.bfloat16, 5e-2), (torch.float16, 2e-2)]


def moved(t, device=None, dtype=None):
    """t on `device` in `dtype` (floating tensors only) with its expanded (stride-0) axes still
    expanded: Tensor.to copies an expanded tensor into full storage."""
    dtype = dtype if t.is_floating_point() and dtype is not None else t.dtype
    base = t[tuple(slice(0, 1) if st == 0 and n > 1 else slice(None) for st, n in zip(t.stride(), t.shape))]
    return base.to(device=device, dtype=dtype).expand(t.shape)


def grads_of(fwd, args, grad_out):
    """Output and (value, location, weight) gradients of fwd through autograd; the leaves are detached
    aliases of args, so strides (stride-0 expansions included) reach the op unchanged."""
    value, shapes, starts, loc, attn = [a.detach().requires_grad_(a.is_floating_point()) for a in args]
    out = fwd(value, shapes, starts, loc, attn)
    return out, torch.autograd.grad(out, (value, loc, attn), grad_out)


def grads_of_views(fwd, args, grad_out, transform):
    """grads_of, with the op fed `transform(value, loc, attn)`: views of the leaves (the gradients
    flow back through the view to the leaves)."""
    value, shapes, starts, loc, attn = [a.detach().requires_grad_(a.is_floating_point()) for a in args]
    v, lo, at = transform(value, loc, attn)
    out = fwd(v, shapes, starts, lo, at)
    return out, torch.autograd.grad(out, (value, loc, attn), grad_out)


def check_against_reference(fwd, problem, dtype, tol, device="cpu", transform=None):
    """fwd's output and gradients in `dtype` on `device` against the float64 reference on the CPU
    (value and grad_output rounded to dtype first, so only the kernel's own rounding remains)."""
    (value, shapes, starts, loc, attn), grad_out = problem
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    args = [moved(value, device, dtype), moved(shapes, device), moved(starts, device), moved(loc, device, acc),
            moved(attn, device, acc)]
    go = grad_out.to(dtype).to(device)
    out, grads = grads_of_views(fwd, args, go, transform or (lambda v, lo, at: (v, lo, at)))
    ref_args = (value.to(dtype).double(), shapes, starts, loc.to(acc).double(), attn.to(acc).double())
    ref, ref_grads = grads_of(ms_deform_attn_pytorch, ref_args, grad_out.to(dtype).double())
    assert out.dtype == dtype and grads[0].dtype == dtype and grads[1].dtype == acc
    torch.testing.assert_close(out.cpu().double(), ref, rtol=tol, atol=tol)
    # the location gradient sums D value differences scaled by the map width; fp32 rounding reaches
    # 1e-4 of it, and the atomicAdd order differs per launch
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.cpu().double(), r, rtol=max(tol, 1e-4), atol=tol * 10)


def odd_problem(d, seed=None, heads=3):
    """27 (n, query, head) tasks on odd map sizes (5x7, 2x3, 1x1): warps and blocks end part-filled,
    some points fall outside the maps."""
    seed = d if seed is None else seed
    args = make_inputs(n=3, lq=3, m=heads, d=d, shapes=((5, 7), (2, 3), (1, 1)), p=2, seed=seed)
    grad_out = torch.randn(3, 3, heads * d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return args, grad_out


def padded_problem(d, seed=0):
    """Value with tokens past the last level (never read) and padded tokens zeroed, as DINO's
    masked value projection leaves them, and points spread over the whole padded maps."""
    value, shapes, starts, loc, attn = make_inputs(n=2, lq=4, m=2, d=d, shapes=((6, 5), (3, 3)), p=3, seed=seed,
                                                   lo=-0.3, hi=1.3)
    value = torch.cat([value, torch.randn(2, 7, 2, d, dtype=torch.float64)], 1)  # 7 trailing tokens
    mask = torch.zeros(2, value.shape[1], dtype=torch.bool)
    mask[1, 3:5] = mask[1, 30 + 6:] = True  # image 1: a padded strip of each level
    value = value.masked_fill(mask[:, :, None, None], 0.0)
    grad_out = torch.randn(2, 4, 2 * d, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    return (value, shapes, starts, loc, attn), grad_out


def misaligned(t):
    """t's values in storage that starts one element past a 16-byte boundary (contiguous, so the op
    reads it in place): the kernels must take their scalar path."""
    flat = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)[1:]
    return flat.view(t.shape).copy_(t)


def xy_planes(loc):
    """loc with x and y in separate planes (stride(5) != 1): the kernels copy it into (x, y) pairs."""
    return torch.stack([loc[..., 0], loc[..., 1]], 0).movedim(0, -1)


def misaligned_value(value, loc, attn):
    return misaligned(value), loc, attn


def split_locations(value, loc, attn):
    return value, xy_planes(loc), attn


def strided_everything(value, loc, attn):
    """A strided slice of value (copied by the op), transposed locations and weights read in place."""
    value_nc = torch.stack([value, torch.zeros_like(value)], -1)[..., 0]
    loc_nc = loc.transpose(0, 1).contiguous().transpose(0, 1)
    attn_nc = attn.permute(4, 0, 1, 2, 3).contiguous().permute(1, 2, 3, 4, 0)
    return value_nc, loc_nc, attn_nc


TRANSFORMS = {"misaligned_value": misaligned_value, "xy_planes": split_locations, "strided": strided_everything}


def emca_problem(d, k=3, m=2, seed=7):
    """EMCA's layout: K value maps stacked k-major on the head axis share the locations of M heads;
    the weights are a stride-0 expansion of one head."""
    value, shapes, starts, loc, attn = make_inputs(n=2, lq=3, m=k * m, d=d, loc_heads=m, seed=seed)
    attn = attn[:, :, :1].expand(-1, -1, m, -1, -1)
    grad_out = torch.randn(2, 3, k * m * d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (value, shapes, starts, loc, attn), grad_out


def emca_reference(args, grad_out, k):
    """The reference gradients of the EMCA layout, with the location / weight gradients of the K maps
    summed back onto the M location heads."""
    value, shapes, starts, loc, attn = args
    rep = (loc.repeat(1, 1, k, 1, 1, 1), attn.repeat(1, 1, k, 1, 1))
    out, grads = grads_of(ms_deform_attn_pytorch, (value, shapes, starts) + rep, grad_out)
    n, lq, m, nl, p, _ = loc.shape
    return out, (grads[0], grads[1].view(n, lq, k, m, nl, p, 2).sum(2), grads[2].view(n, lq, k, m, nl, p).sum(2))


def nan_and_far_points(d=8):
    """Points at NaN and at +-1e30: they read nothing and get zero gradients (the kernels clamp the
    pixel coordinate before converting it to an integer)."""
    (value, shapes, starts, loc, attn), grad_out = odd_problem(d, seed=3, heads=2)
    bad = loc.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    bad[1, 1, 1, 1, 1, 0] = 1e30
    bad[2, 2, 0, 0, 1, 1] = -1e30
    hit = torch.zeros(attn.shape, dtype=torch.bool)
    hit[0, 0, 0, 0, 0] = hit[1, 1, 1, 1, 1] = hit[2, 2, 0, 0, 1] = True
    return (value, shapes, starts, bad, attn), grad_out, hit, loc


def check_nan_and_far_points(fwd, device="cpu"):
    """The bad points of nan_and_far_points behave as points with zero weight: same output and
    value gradient, zero location / weight gradients for them, the rest unchanged."""
    (value, shapes, starts, bad, attn), grad_out, hit, good = nan_and_far_points()
    args = [moved(t, device) for t in (value, shapes, starts, bad, attn)]
    out, grads = grads_of(fwd, args, grad_out.to(device))
    zeroed = attn.masked_fill(hit, 0.0)
    ref, ref_grads = grads_of(ms_deform_attn_pytorch, (value, shapes, starts, good, zeroed), grad_out)
    torch.testing.assert_close(out.cpu(), ref)
    torch.testing.assert_close(grads[0].cpu(), ref_grads[0])
    assert (grads[1].cpu()[hit] == 0).all() and (grads[2].cpu()[hit] == 0).all()
    torch.testing.assert_close(grads[1].cpu()[~hit], ref_grads[1][~hit])
    torch.testing.assert_close(grads[2].cpu()[~hit], ref_grads[2][~hit])


def cuda_test_problem(d, dtype=torch.float32):
    """The larger problem of the CUDA tests: 198 (n, query, head) tasks on a 17x23 map, 4 points."""
    args = make_inputs(n=3, lq=33, m=2, d=d, dtype=dtype, shapes=((17, 23), (5, 3), (1, 1)), p=4)
    grad_out = torch.randn(3, 33, 2 * d, generator=torch.Generator().manual_seed(d), dtype=dtype)
    return args, grad_out
