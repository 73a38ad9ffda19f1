"""Fake (meta) implementations and autograd for the msda operators.

Registered once per operator namespace (`msda`, and `msda_emu` for the test-only SIMT
emulator build, same schema), after the compiled library is loaded; they make the
operators work under torch.compile (shape propagation without running a kernel) and
under autograd.
"""
import torch

_registered: set = set()


def _forward_fake(value, spatial_shapes, level_start_index, sampling_loc, attn_weight):
    n, _, m, d = value.shape
    torch._check(sampling_loc.dim() == 6, lambda: "msda: sampling_locations must be (N, Lq, M, L, P, 2)")
    return value.new_empty((n, sampling_loc.shape[1], m * d))


def _backward_fake(value, spatial_shapes, level_start_index, sampling_loc, attn_weight, grad_output):
    return (torch.empty(value.shape, dtype=value.dtype, device=value.device),
            torch.empty(sampling_loc.shape, dtype=sampling_loc.dtype, device=sampling_loc.device),
            torch.empty(attn_weight.shape, dtype=attn_weight.dtype, device=attn_weight.device))


def _setup_context(ctx, inputs, output):
    value, spatial_shapes, level_start_index, sampling_loc, attn_weight = inputs
    ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_loc, attn_weight)


def _autograd_backward(namespace: str):
    def backward(ctx, grad_output):
        value, spatial_shapes, level_start_index, sampling_loc, attn_weight = ctx.saved_tensors
        grad_value, grad_loc, grad_attn = getattr(torch.ops, namespace).ms_deform_attn_backward(
            value, spatial_shapes, level_start_index, sampling_loc, attn_weight, grad_output)
        return grad_value, None, None, grad_loc, grad_attn
    return backward


def register(namespace: str = "msda") -> None:
    """Idempotent; call after the library defining `namespace`'s schema has been loaded."""
    if namespace in _registered:
        return
    torch.library.register_fake(f"{namespace}::ms_deform_attn_forward")(_forward_fake)
    torch.library.register_fake(f"{namespace}::ms_deform_attn_backward")(_backward_fake)
    torch.library.register_autograd(f"{namespace}::ms_deform_attn_forward", _autograd_backward(namespace),
                                    setup_context=_setup_context)
    _registered.add(namespace)
