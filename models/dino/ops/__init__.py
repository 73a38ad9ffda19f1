"""Multi-scale deformable attention (Deformable DETR), used by DINO's encoder and decoder.

`ms_deform_attn` is the one entry point; it picks a backend per call.
`MSDeformAttn` is the nn.Module with the projections around it.
"""
from .backend import backend_info, set_backend
from .functions import ms_deform_attn, ms_deform_attn_pytorch
from .modules import MSDeformAttn

__all__ = ["ms_deform_attn", "ms_deform_attn_pytorch", "MSDeformAttn", "set_backend", "backend_info"]
