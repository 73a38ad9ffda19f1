import math

import torch

from models.common.layers import gen_sineembed_for_position
from models.common.position_encoding import PositionEmbeddingSineHW
from models.dino.query_selection import gen_encoder_output_proposals
from util.misc import NestedTensor


def test_sine_embedding_of_boxes_matches_formula():
    pos = torch.tensor([[[0.25, 0.5, 0.1, 0.2]]])
    emb = gen_sineembed_for_position(pos, d_model=8)
    assert emb.shape == (1, 1, 16)
    dim_t = 10000 ** (2 * (torch.arange(4) // 2) / 4)
    y = 0.5 * 2 * math.pi / dim_t
    expected_y = torch.stack([y[0::2].sin(), y[1::2].cos()], -1).flatten()
    assert torch.allclose(emb[0, 0, :4], expected_y)  # y first, then x, w, h


def test_position_encoding_values_and_valid_size_normalisation():
    """Every feature against the formula: (y features, then x) [sin(c / T^(0/F)), cos(c / T^(0/F)),
    sin(c / T^(2/F)), cos(c / T^(2/F))] with c = 2*pi * (valid pixels up to here) / (valid size),
    T = 20 for y, 10 for x, F = 4; the right half of the map is padding (valid width 3), where
    no pixel of the column is valid (y = 0) and x keeps the row's last valid count."""
    mask = torch.zeros(1, 4, 6, dtype=torch.bool)
    mask[:, :, 3:] = True
    pe = PositionEmbeddingSineHW(4, temperature_h=20, temperature_w=10)(NestedTensor(torch.zeros(1, 1, 4, 6), mask))
    assert pe.shape == (1, 8, 4, 6)

    def features(c, t):
        return [math.sin(c), math.cos(c), math.sin(c / t ** 0.5), math.cos(c / t ** 0.5)]

    expected = torch.zeros(8, 4, 6)
    for i in range(4):
        for j in range(6):
            y = 2 * math.pi * (i + 1) / 4 if j < 3 else 0.0
            x = 2 * math.pi * min(j + 1, 3) / 3
            expected[:, i, j] = torch.tensor(features(y, 20) + features(x, 10))
    assert torch.allclose(pe[0], expected, atol=1e-5)
    assert expected.abs().max() > 0.9  # not satisfiable by an all-zero encoding


def test_proposals_are_inf_on_padding_and_centred_on_pixels():
    memory = torch.ones(1, 4 + 1, 3)
    mask = torch.zeros(1, 5, dtype=torch.bool)
    mask[0, 1] = True  # second pixel of the 2x2 level is padding
    out_mem, props = gen_encoder_output_proposals(memory, mask, [(2, 2), (1, 1)])
    assert torch.isinf(props[0, 1]).all() and (out_mem[0, 1] == 0).all()
    box = props[0, 0].sigmoid()
    assert torch.allclose(box, torch.tensor([0.5 / 1, 0.5 / 2, 0.05, 0.05]), atol=1e-5)  # valid width is 1
