"""ResNet backbone (torchvision) returning multi-scale features with padding masks.

Initial weights come from the config key `backbone_weights` (see weights.py): torchvision's
ImageNet weights through torch.hub's cache by default (DINO_4scale/5scale), a local .pth, or none.
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FrozenBatchNorm2d

from util.misc import NestedTensor

from .table import STAGE_STRIDES, backbone_spec
from .weights import load_into

_NORM_LAYERS = {"FrozenBatchNorm2d": FrozenBatchNorm2d, "BatchNorm2d": nn.BatchNorm2d}


class Backbone(nn.Module):
    """A torchvision ResNet cut into stages; returns the stages named by `return_interm_indices`.

    return_interm_indices index the stages layer1..layer4 (0..3); DINO-4scale uses [1, 2, 3]
    (strides 8, 16, 32), DINO-5scale [0, 1, 2, 3]. With freeze_stem the stem and layer1 are
    frozen, as in DETR/DINO with ImageNet weights; a model trained from scratch trains them too.
    state_dict: a torchvision ResNet state dict to start from (None = random), named `source` in errors.
    """

    def __init__(self, name: str, train_backbone: bool, dilation: bool, return_interm_indices: Sequence[int],
                 norm_layer: str = "FrozenBatchNorm2d", state_dict: Optional[Dict[str, torch.Tensor]] = None,
                 freeze_stem: bool = True, source: str = "state_dict"):
        super().__init__()
        spec = backbone_spec(name)
        if spec.family != "resnet":
            raise ValueError(f"backbone={name!r} is a {spec.family}, not a ResNet")
        if norm_layer not in _NORM_LAYERS:
            raise ValueError(f"batch_norm_type={norm_layer!r} is not one of {sorted(_NORM_LAYERS)}")
        resnet = getattr(torchvision.models, name)(weights=None, replace_stride_with_dilation=[False, False, dilation],
                                                   norm_layer=_NORM_LAYERS[norm_layer])
        if state_dict is not None:
            load_into(resnet, state_dict, source)
        for pname, p in resnet.named_parameters():
            in_stem = not any(s in pname for s in ("layer2", "layer3", "layer4"))
            if not train_backbone or (freeze_stem and in_stem):
                p.requires_grad_(False)
        return_layers = {f"layer{i + 1}": str(k) for k, i in enumerate(return_interm_indices)}
        self.body = IntermediateLayerGetter(resnet, return_layers=return_layers)
        self.num_channels: List[int] = spec.stage_channels(return_interm_indices)
        self.strides: List[int] = [STAGE_STRIDES[i] for i in return_interm_indices]

    def forward(self, tensor_list: NestedTensor) -> Dict[str, NestedTensor]:
        out = {}
        for name, x in self.body(tensor_list.tensors).items():
            mask = F.interpolate(tensor_list.mask[None].float(), size=x.shape[-2:]).to(torch.bool)[0]
            out[name] = NestedTensor(x, mask)
        return out
