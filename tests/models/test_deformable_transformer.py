"""The deformable transformer assembled from parts, run on its own (no detector around it): its output
structure and shapes, the parts it is given (query selection, heads, decoder memory), the decoder's
per-layer self-attention mask hook, and the registration of the selection's modules under their names."""
import math

import pytest
import torch
from torch import nn

from models.common.layers import MLP
from models.dino.deformable_transformer import DeformableTransformer, LastEncoderLayer, TransformerOutput
from models.dino.query_selection import MixedQuerySelection, Queries, QuerySelection
from models.dino.transformer_layers import (
    DeformableDecoder,
    DeformableDecoderLayer,
    DeformableEncoder,
    DeformableEncoderLayer,
)

D, HEADS, LEVELS, POINTS, QUERIES, CLASSES = 16, 2, 2, 2, 5, 3
SHAPES = [(6, 8), (3, 4)]  # two levels


def parts(num_dec: int = 2):
    sizes = dict(d_model=D, d_ffn=32, dropout=0.0, n_levels=LEVELS, n_heads=HEADS, n_points=POINTS)
    encoder = DeformableEncoder([DeformableEncoderLayer(**sizes) for _ in range(2)])
    box_heads = nn.ModuleList([MLP(D, D, 4, 3) for _ in range(num_dec)])
    class_heads = nn.ModuleList([nn.Linear(D, CLASSES) for _ in range(num_dec)])
    decoder = DeformableDecoder([DeformableDecoderLayer(**sizes) for _ in range(num_dec)], D, box_heads=box_heads,
                                class_heads=class_heads)
    selection = MixedQuerySelection(D, QUERIES, nn.Linear(D, CLASSES), MLP(D, D, 4, 3))
    return encoder, decoder, selection


def inputs(batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    srcs = [torch.randn(batch, D, h, w, generator=g) for h, w in SHAPES]
    masks = [torch.zeros(batch, h, w, dtype=torch.bool) for h, w in SHAPES]
    masks[0][1, :, 6:] = True  # the second image is narrower
    masks[1][1, :, 3:] = True
    pos = [torch.randn(batch, D, h, w, generator=g) for h, w in SHAPES]
    return srcs, masks, pos


def test_runs_on_its_own_and_returns_documented_shapes():
    transformer = DeformableTransformer(*parts(), num_feature_levels=LEVELS, d_model=D).eval()
    with torch.no_grad():
        out = transformer(*inputs())
    assert isinstance(out, TransformerOutput) and isinstance(out.queries, Queries)
    assert [h.shape for h in out.hs] == [(2, QUERIES, D)] * 2
    assert [r.shape for r in out.references] == [(2, QUERIES, 4)] * 3
    assert out.memory.shape == (2, sum(h * w for h, w in SHAPES), D)
    assert out.queries.proposal_logits.shape == (2, QUERIES, CLASSES)
    assert out.queries.proposal_boxes.shape == (2, QUERIES, 4)
    assert out.queries.anchors.requires_grad is False and isinstance(transformer.decoder_memory, LastEncoderLayer)


def test_selection_modules_are_registered_under_their_own_names_and_follow_train_mode():
    encoder, decoder, selection = parts()
    transformer = DeformableTransformer(encoder, decoder, selection, num_feature_levels=LEVELS, d_model=D)
    keys = transformer.state_dict()
    for name in ("tgt_embed.weight", "enc_output.weight", "enc_output_norm.weight", "enc_out_class_embed.weight",
                 "enc_out_bbox_embed.layers.0.weight", "level_embed", "decoder.bbox_embed.0.layers.0.weight",
                 "decoder.class_embed.1.weight"):
        assert name in keys, name
    assert not any(k.startswith("query_selection.") for k in keys)
    transformer.eval()
    assert selection.training is False and selection.enc_output.training is False
    transformer.train()
    assert selection.training is True


def test_heads_handed_in_keep_their_initialisation():
    """The transformer initialises its own layers (Xavier), not the prediction heads it was given."""
    encoder, decoder, selection = parts()
    for head in decoder.bbox_embed:
        nn.init.zeros_(head.layers[-1].weight)
    DeformableTransformer(encoder, decoder, selection, num_feature_levels=LEVELS, d_model=D)
    assert all(h.layers[-1].weight.abs().sum() == 0 for h in decoder.bbox_embed)


def test_per_layer_mask_hook_changes_the_next_layers_attention():
    """mask_update sees each layer's output and refined boxes and sets the next layer's mask; a mask that
    isolates query 0 from the others changes what layer 2 computes for query 0 (and for the others)."""
    torch.manual_seed(0)
    transformer = DeformableTransformer(*parts(), num_feature_levels=LEVELS, d_model=D).eval()
    seen = []

    def isolate_query_0(layer, output, boxes):
        seen.append((layer, tuple(output.shape), tuple(boxes.shape)))
        mask = torch.zeros(QUERIES, QUERIES, dtype=torch.bool)
        mask[0, 1:] = mask[1:, 0] = True
        return mask

    with torch.no_grad():
        plain = transformer(*inputs())
        hooked = transformer(*inputs(), mask_update=isolate_query_0)
    assert seen == [(0, (2, QUERIES, D), (2, QUERIES, 4))]  # called between layers only
    assert torch.equal(plain.hs[0], hooked.hs[0])
    assert not torch.allclose(plain.hs[1], hooked.hs[1])


def test_denoising_queries_come_first_and_are_masked():
    transformer = DeformableTransformer(*parts(), num_feature_levels=LEVELS, d_model=D).eval()
    dn = 4
    anchors, content = torch.zeros(2, dn, 4), torch.randn(2, dn, D)
    mask = torch.zeros(dn + QUERIES, dn + QUERIES, dtype=torch.bool)
    mask[dn:, :dn] = True  # the selected queries do not see the denoising ones
    with torch.no_grad():
        with_dn = transformer(*inputs(), dn_anchors=anchors, dn_content=content, self_attn_mask=mask)
        without = transformer(*inputs())
    assert with_dn.hs[-1].shape == (2, dn + QUERIES, D)
    assert torch.allclose(with_dn.hs[-1][:, dn:], without.hs[-1], atol=1e-5)


class FixedQueries(QuerySelection):
    """A selection that learns nothing: the detector's query embeddings as content, fixed boxes."""

    def forward(self, memory, padding_mask, spatial_shapes, query_embed=None):
        b = memory.shape[0]
        anchors = torch.full((b, query_embed.shape[0], 4), -math.log(3.0))  # sigmoid = 0.25
        return Queries(query_embed[None].expand(b, -1, -1), anchors)


def test_another_query_selection_plugs_in_and_receives_query_embed():
    encoder, decoder, _ = parts()
    transformer = DeformableTransformer(encoder, decoder, FixedQueries(), num_feature_levels=LEVELS, d_model=D)
    embed = torch.randn(7, D)
    with torch.no_grad():
        out = transformer.eval()(*inputs(), query_embed=embed)
    assert out.hs[0].shape == (2, 7, D) and out.queries.proposal_logits is None
    assert torch.allclose(out.references[0], torch.full((2, 7, 4), 0.25))


def test_a_selection_with_its_own_tensors_is_refused():
    class Bad(QuerySelection):
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(torch.zeros(3))

    encoder, decoder, _ = parts()
    with pytest.raises(ValueError, match="keeps its tensors in submodules"):
        DeformableTransformer(encoder, decoder, Bad(), num_feature_levels=LEVELS, d_model=D)


def test_points_refine_into_boxes():
    """2-d references (Deformable DETR without two-stage) become boxes after the first refinement: the
    head's delta is added to the logits of (x, y) only."""
    encoder, decoder, _ = parts()
    points = torch.tensor([[[0.3, 0.6]]])
    delta = torch.tensor([[[0.5, -0.5, 0.2, 0.1]]])
    decoder.bbox_embed[0] = nn.Identity()
    boxes = decoder.refine(0, delta, points)
    logit = torch.log(points / (1 - points))
    assert torch.allclose(boxes[..., :2], (logit + delta[..., :2]).sigmoid())
    assert torch.allclose(boxes[..., 2:], delta[..., 2:].sigmoid())
