"""Multi-scale deformable attention: the dispatching entry point (shapes: see ..reference)."""
from torch import Tensor

from .. import backend as _backend
from ..reference import ms_deform_attn_pytorch


def ms_deform_attn(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                   sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """Multi-scale deformable attention; same arguments and result as `ms_deform_attn_pytorch`.

    The backend (compiled kernel or the reference) is picked per call for value's device,
    see `models.dino.ops.backend`. Also accepts fp16/bf16 value (locations and weights are
    used in fp32) and location heads that divide the value heads (EMCA layout: value head h
    reads location head h % M_loc, so K maps stacked k-major share one set of locations).
    """
    return _backend.dispatch(ms_deform_attn_pytorch, value, spatial_shapes, level_start_index,
                             sampling_locations, attention_weights)
