"""Backbones: torchvision ResNets and timm's Swin / ConvNeXt, each with DINO's features and names.

`build_backbone(args)` returns the `Joiner` every detector holds as `backbone`: the network at
index 0 (state_dict prefix `backbone.0.`), the position encoding at index 1. Which backbones exist
and what they output is the table in table.py.
"""
from torch import nn

from util.misc import NestedTensor

from ..position_encoding import build_position_encoding
from .table import BACKBONES, STAGE_STRIDES, BackboneSpec, backbone_spec

__all__ = ["BACKBONES", "STAGE_STRIDES", "BackboneSpec", "Joiner", "backbone_spec", "build_backbone"]


class Joiner(nn.Sequential):
    """backbone (index 0) followed by the position encoding (index 1), as DINO names them."""

    def __init__(self, backbone: nn.Module, position_embedding: nn.Module):
        super().__init__(backbone, position_embedding)
        self.num_channels = backbone.num_channels
        self.strides = backbone.strides

    def forward(self, tensor_list: NestedTensor):
        """-> list of NestedTensor features (fine to coarse), list of (B, C, H, W) position encodings."""
        features = list(self[0](tensor_list).values())
        pos = [self[1](f).to(f.tensors.dtype) for f in features]
        return features, pos


def build_network(args) -> nn.Module:
    """The network named by args.backbone (its family's module), initialised from args.backbone_weights."""
    family = backbone_spec(args.backbone).family
    if family != "resnet":
        from .timm_backbone import build_timm_backbone  # imports timm only for these backbones
        return build_timm_backbone(args)
    from .resnet import Backbone
    from .weights import backbone_state
    if args.use_checkpoint or args.backbone_freeze_keywords:
        raise ValueError(f"use_checkpoint / backbone_freeze_keywords are implemented for the Swin/ConvNeXt "
                         f"backbones, not backbone={args.backbone}; set use_checkpoint=False and "
                         f"backbone_freeze_keywords=None")
    state = backbone_state(args.backbone_weights, args.backbone)
    return Backbone(args.backbone, args.lr_backbone > 0, args.dilation, args.return_interm_indices,
                    norm_layer=args.batch_norm_type, state_dict=state, freeze_stem=args.backbone_freeze_stem,
                    source=str(args.backbone_weights))


def build_backbone(args) -> Joiner:
    """The backbone network of args.backbone plus the position encoding of the config."""
    return Joiner(build_network(args), build_position_encoding(args))
