import math

import torch

from models.dino.position_encoding import PositionEmbeddingSineHW
from models.dino.utils import gen_encoder_output_proposals, gen_sineembed_for_position
from util.misc import NestedTensor


def test_sine_embedding_of_boxes_matches_formula():
    pos = torch.tensor([[[0.25, 0.5, 0.1, 0.2]]])
    emb = gen_sineembed_for_position(pos, d_model=8)
    assert emb.shape == (1, 1, 16)
    dim_t = 10000 ** (2 * (torch.arange(4) // 2) / 4)
    y = 0.5 * 2 * math.pi / dim_t
    expected_y = torch.stack([y[0::2].sin(), y[1::2].cos()], -1).flatten()
    assert torch.allclose(emb[0, 0, :4], expected_y)  # y first, then x, w, h


def test_position_encoding_normalises_by_valid_size():
    mask = torch.zeros(1, 4, 6, dtype=torch.bool)
    mask[:, :, 3:] = True  # right half padded
    pe = PositionEmbeddingSineHW(4, 20, 20)(NestedTensor(torch.zeros(1, 1, 4, 6), mask))
    assert pe.shape == (1, 8, 4, 6)
    # x of the last valid column is 2*pi: its first x feature is sin(2*pi) = 0
    assert abs(pe[0, 4, 0, 2].item()) < 1e-5
    # y of row 1 (of 4) is 2*pi * 2/4 = pi
    assert abs(pe[0, 0, 1, 0].item() - math.sin(math.pi)) < 1e-5


def test_proposals_are_inf_on_padding_and_centred_on_pixels():
    memory = torch.ones(1, 4 + 1, 3)
    mask = torch.zeros(1, 5, dtype=torch.bool)
    mask[0, 1] = True  # second pixel of the 2x2 level is padding
    out_mem, props = gen_encoder_output_proposals(memory, mask, [(2, 2), (1, 1)])
    assert torch.isinf(props[0, 1]).all() and (out_mem[0, 1] == 0).all()
    box = props[0, 0].sigmoid()
    assert torch.allclose(box, torch.tensor([0.5 / 1, 0.5 / 2, 0.05, 0.05]), atol=1e-5)  # valid width is 1
