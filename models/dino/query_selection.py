"""Query selection: from the encoder's output to the decoder's first queries and reference boxes."""
from typing import List

import torch
from torch import Tensor


def gen_encoder_output_proposals(memory: Tensor, memory_padding_mask: Tensor, spatial_shapes: List):
    """One box proposal per encoder token, for two-stage query selection.

    Each token proposes a box centred on its pixel, of size 0.05 * 2**level of the valid
    image. memory (B, S, C), memory_padding_mask (B, S) True = padding,
    spatial_shapes [(H_l, W_l)] -> (memory with padded/invalid tokens zeroed (B, S, C),
    proposals as logits (B, S, 4), +inf where padded or too close to the border).
    """
    bs = memory.shape[0]
    proposals = []
    start = 0
    for lvl, (h, w) in enumerate(spatial_shapes):
        mask = memory_padding_mask[:, start:start + h * w].view(bs, h, w)
        valid_h = (~mask[:, :, 0]).sum(1)
        valid_w = (~mask[:, 0, :]).sum(1)
        ys, xs = torch.meshgrid(torch.linspace(0, h - 1, h, dtype=torch.float32, device=memory.device),
                                torch.linspace(0, w - 1, w, dtype=torch.float32, device=memory.device),
                                indexing="ij")
        grid = torch.stack([xs, ys], -1)  # (H, W, 2) as (x, y)
        scale = torch.stack([valid_w, valid_h], 1).view(bs, 1, 1, 2)
        grid = (grid.unsqueeze(0).expand(bs, -1, -1, -1) + 0.5) / scale
        wh = torch.ones_like(grid) * 0.05 * (2.0 ** lvl)
        proposals.append(torch.cat((grid, wh), -1).view(bs, -1, 4))
        start += h * w
    proposals = torch.cat(proposals, 1)
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
    proposals = torch.log(proposals / (1 - proposals))
    invalid = memory_padding_mask.unsqueeze(-1) | ~valid
    proposals = proposals.masked_fill(invalid, float("inf"))
    output_memory = memory.masked_fill(invalid, 0.0)
    return output_memory, proposals
