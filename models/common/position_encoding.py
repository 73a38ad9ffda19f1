"""Sine positional encoding of feature maps (DINO's PositionEmbeddingSineHW)."""
import math

import torch
from torch import nn

from util.misc import NestedTensor

from .layers import coordinate_dtype


class PositionEmbeddingSineHW(nn.Module):
    """2-D sine encoding with separate temperatures for y and x.

    Pixel positions are the cumulative count of valid (unpadded) pixels, normalised by the
    valid height/width and multiplied by 2*pi. Output (B, 2 * num_pos_feats, H, W), the y
    features first, then x.
    """

    def __init__(self, num_pos_feats: int = 128, temperature_h: float = 20, temperature_w: float = 20,
                 normalize: bool = True, scale: float = 2 * math.pi):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature_h = temperature_h
        self.temperature_w = temperature_w
        self.normalize = normalize
        self.scale = scale

    def _embed(self, coord, temperature):
        dim_t = torch.arange(self.num_pos_feats, dtype=coord.dtype, device=coord.device)
        dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        v = coord[:, :, :, None] / dim_t
        return torch.stack((v[:, :, :, 0::2].sin(), v[:, :, :, 1::2].cos()), dim=4).flatten(3)

    def forward(self, tensor_list: NestedTensor):
        mask = tensor_list.mask
        not_mask = ~mask
        dtype = coordinate_dtype(tensor_list.tensors)
        y_embed = not_mask.cumsum(1, dtype=dtype)
        x_embed = not_mask.cumsum(2, dtype=dtype)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        pos = torch.cat((self._embed(y_embed, self.temperature_h), self._embed(x_embed, self.temperature_w)), dim=3)
        return pos.permute(0, 3, 1, 2)


def build_position_encoding(args) -> PositionEmbeddingSineHW:
    """DINO's sine encoding ('sine' and 'SineHW' name the same one)."""
    return PositionEmbeddingSineHW(args.hidden_dim // 2, temperature_h=args.pe_temperatureH,
                                   temperature_w=args.pe_temperatureW, normalize=True)
