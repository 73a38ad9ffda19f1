"""Sine positional encoding of feature maps (DINO's PositionEmbeddingSineHW; with temperature 10000 DETR's, and
with offset -0.5 too Deformable DETR's)."""
import math

import torch
from torch import nn

from util.misc import NestedTensor

from .layers import coordinate_dtype


class PositionEmbeddingSineHW(nn.Module):
    """2-D sine encoding with separate temperatures for y and x.

    Pixel positions are the cumulative count of valid (unpadded) pixels plus `offset`, normalised
    by the valid height/width and multiplied by 2*pi. Output (B, 2 * num_pos_feats, H, W), the y
    features first, then x. DINO: temperatures 20, offset 0; DETR: 10000, offset 0; Deformable
    DETR: 10000, offset -0.5 (pixel centres: (count - 0.5) / valid size).
    """

    def __init__(self, num_pos_feats: int = 128, temperature_h: float = 20, temperature_w: float = 20,
                 normalize: bool = True, scale: float = 2 * math.pi, offset: float = 0.0):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature_h = temperature_h
        self.temperature_w = temperature_w
        self.normalize = normalize
        self.scale = scale
        self.offset = offset

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
            # the offset only where it is set: DINO's numbers stay bit for bit what they were
            y_num = y_embed + self.offset if self.offset else y_embed
            x_num = x_embed + self.offset if self.offset else x_embed
            y_embed = y_num / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_num / (x_embed[:, :, -1:] + eps) * self.scale
        pos = torch.cat((self._embed(y_embed, self.temperature_h), self._embed(x_embed, self.temperature_w)), dim=3)
        return pos.permute(0, 3, 1, 2)


def build_position_encoding(args) -> PositionEmbeddingSineHW:
    """The sine encoding of the config ('sine' and 'SineHW' name the same one): temperatures
    pe_temperatureH / pe_temperatureW, offset pe_offset."""
    return PositionEmbeddingSineHW(args.hidden_dim // 2, temperature_h=args.pe_temperatureH,
                                   temperature_w=args.pe_temperatureW, normalize=True, offset=args.pe_offset)
