"""Multi-scale features for the deformable transformer: the backbone's levels projected to its width,
plus extra stride-2 levels (DINO and Deformable DETR share the layout and its parameter names)."""
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from util.misc import NestedTensor


def input_projections(in_channels: Sequence[int], hidden_dim: int, num_levels: int) -> nn.ModuleList:
    """Backbone levels get a 1x1 conv, extra levels a 3x3 stride-2 conv on the previous one (the first
    on the last backbone level's raw features), each followed by GroupNorm(32); Xavier-initialised.
    Named input_proj.{level}.{0: conv, 1: norm} in the detectors."""
    projs = [nn.Sequential(nn.Conv2d(c, hidden_dim, 1), nn.GroupNorm(32, hidden_dim)) for c in in_channels]
    prev = in_channels[-1]
    for _ in range(num_levels - len(in_channels)):
        projs.append(nn.Sequential(nn.Conv2d(prev, hidden_dim, 3, stride=2, padding=1),
                                   nn.GroupNorm(32, hidden_dim)))
        prev = hidden_dim
    for proj in projs:
        nn.init.xavier_uniform_(proj[0].weight, gain=1)
        nn.init.constant_(proj[0].bias, 0)
    return nn.ModuleList(projs)


def multiscale_features(backbone: nn.Module, input_proj: nn.ModuleList, samples: NestedTensor
                        ) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
    """Backbone levels plus extra strided levels -> per level (B, C, H_l, W_l) maps, (B, H_l, W_l) padding
    masks and position encodings (the backbone's encoding, backbone[1], on the extra levels too)."""
    features, poss = backbone(samples)
    srcs, masks = [], []
    for proj, feat in zip(input_proj, features):
        src, mask = feat.decompose()
        srcs.append(proj(src))
        masks.append(mask)
    for lvl in range(len(features), len(input_proj)):
        src = input_proj[lvl](features[-1].tensors if lvl == len(features) else srcs[-1])
        mask = F.interpolate(samples.mask[None].float(), size=src.shape[-2:]).to(torch.bool)[0]
        srcs.append(src)
        masks.append(mask)
        poss.append(backbone[1](NestedTensor(src, mask)).to(src.dtype))
    return srcs, masks, poss
