"""Query selection: from the encoder's output to the decoder's first queries and reference boxes.

A `QuerySelection` is a part of the deformable transformer (deformable_transformer.py): it owns its
modules, which the transformer registers under its own names (the names official checkpoints use,
e.g. DINO's `transformer.tgt_embed`), and returns `Queries`. DINO's is `MixedQuerySelection`; Deformable
DETR's are `StaticQuerySelection` (learned queries, reference points from their position) and
`ProposalQuerySelection` (its two-stage variant).
"""
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from ..common.layers import coordinate_dtype, gen_sineembed_for_position


class Queries(NamedTuple):
    """The decoder's first queries (Q of them) and what the encoder predicted for them.

    content (B, Q, C): content queries; anchors (B, Q, 4) or (B, Q, 2): reference boxes or points as logits
    (inverse sigmoid), detached unless the selection trains them through the decoder (Deformable DETR's
    static reference points); position (B, Q, C) or None: a static positional query (None: the decoder
    derives it from the boxes at every layer, as DINO does); proposal_logits (B, N, K) and proposal_boxes
    (B, N, 4) sigmoid, or None: encoder proposals' class logits and (undetached) boxes, supervised by the
    encoder loss of two-stage detectors: the N = Q selected ones (DINO) or every token's, N = S (Deformable
    DETR)."""
    content: Tensor
    anchors: Tensor
    position: Optional[Tensor] = None
    proposal_logits: Optional[Tensor] = None
    proposal_boxes: Optional[Tensor] = None


class QuerySelection(nn.Module):
    """Base of the query selections: forward(memory (B, S, C), padding mask (B, S) True = padding,
    spatial_shapes [(H_l, W_l)], query_embed) -> Queries. query_embed: learned query embeddings the
    detector owns and hands in (None for selections that learn none). Holds no parameters itself, only
    submodules (registered on the transformer under their own names); its training mode follows the
    transformer's."""

    def forward(self, memory: Tensor, padding_mask: Tensor, spatial_shapes: List[Tuple[int, int]],
                query_embed: Optional[Tensor] = None) -> Queries:
        raise NotImplementedError


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
        # arange, not linspace: linspace's ONNX export gives NaN for a one-pixel-high or -wide map
        dtype = coordinate_dtype(memory)
        ys, xs = torch.meshgrid(torch.arange(h, dtype=dtype, device=memory.device),
                                torch.arange(w, dtype=dtype, device=memory.device), indexing="ij")
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


def score_proposals(memory: Tensor, padding_mask: Tensor, spatial_shapes: List, enc_output: nn.Module,
                    enc_output_norm: nn.Module, class_head: nn.Module, box_head: nn.Module):
    """Every token's proposal scored by the encoder heads (both two-stage selections): the memory
    (padded / invalid tokens zeroed) through enc_output and enc_output_norm, then the class head and the
    box head's delta on the proposal's logits.
    -> (normalised memory (B, S, C), class logits (B, S, K), box logits (B, S, 4), raw proposals (B, S, 4))."""
    output_memory, output_proposals = gen_encoder_output_proposals(memory, padding_mask, spatial_shapes)
    output_memory = enc_output_norm(enc_output(output_memory))
    logits = class_head(output_memory)  # (B, S, num_classes)
    boxes = box_head(output_memory) + output_proposals  # (B, S, 4) logits
    return output_memory, logits, boxes, output_proposals


def _check_enough_tokens(memory: Tensor, num_queries: int) -> None:
    if memory.shape[1] < num_queries:
        raise ValueError(f"num_queries={num_queries} exceeds the {memory.shape[1]} encoder tokens of this "
                         f"batch: use larger images or --options num_queries=N with N <= {memory.shape[1]}")


class MixedQuerySelection(QuerySelection):
    """DINO's two-stage mixed query selection: every encoder token proposes a box, the top-k by their
    highest class score give the anchors (detached); the content queries are learned (`tgt_embed`, with
    learned_content) or the selected tokens' memory, detached.

    class_head / box_head score and refine the proposals (DINO: copies of the decoder's heads; the
    caller initialises them). Parameter names are DINO's: enc_output, enc_output_norm, tgt_embed,
    enc_out_class_embed, enc_out_bbox_embed."""

    def __init__(self, d_model: int, num_queries: int, class_head: nn.Module, box_head: nn.Module,
                 learned_content: bool = True):
        super().__init__()
        self.num_queries = num_queries
        self.tgt_embed = nn.Embedding(num_queries, d_model) if learned_content else None
        self.enc_output = nn.Linear(d_model, d_model)
        self.enc_output_norm = nn.LayerNorm(d_model)
        self.enc_out_class_embed = class_head
        self.enc_out_bbox_embed = box_head
        for weight in [self.enc_output.weight] + ([self.tgt_embed.weight] if learned_content else []):
            nn.init.xavier_uniform_(weight)

    def proposals(self, memory: Tensor, padding_mask: Tensor, spatial_shapes: List):
        """-> (normalised memory (B, S, C), class logits (B, S, K), box logits (B, S, 4), raw proposals (B, S, 4))."""
        return score_proposals(memory, padding_mask, spatial_shapes, self.enc_output, self.enc_output_norm,
                               self.enc_out_class_embed, self.enc_out_bbox_embed)

    def forward(self, memory: Tensor, padding_mask: Tensor, spatial_shapes: List[Tuple[int, int]],
                query_embed: Optional[Tensor] = None) -> Queries:
        _check_enough_tokens(memory, self.num_queries)
        output_memory, logits, boxes, _ = self.proposals(memory, padding_mask, spatial_shapes)
        topk = torch.topk(logits.max(-1)[0], self.num_queries, dim=1)[1]  # (B, Q)
        anchors = torch.gather(boxes, 1, topk.unsqueeze(-1).expand(-1, -1, 4))
        selected = torch.gather(output_memory, 1, topk.unsqueeze(-1).expand(-1, -1, output_memory.shape[-1]))
        if self.tgt_embed is not None:
            content = self.tgt_embed.weight[None].expand(memory.shape[0], -1, -1)
        else:
            content = selected.detach()
        return Queries(content, anchors.detach(), proposal_logits=self.enc_out_class_embed(selected),
                       proposal_boxes=anchors.sigmoid())


class StaticQuerySelection(QuerySelection):
    """Deformable DETR's queries (without two-stage): the detector's learned query embeddings (Q, 2C) are a
    static positional query (columns [:C]) and the content ([C:]), the same for every image; the reference
    points are `reference_points(position)`, 2-d (x, y) logits, trained through the decoder (not detached).
    Parameter: reference_points (Linear C -> 2, registered as transformer.reference_points)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.d_model = d_model
        self.reference_points = nn.Linear(d_model, 2)
        nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
        nn.init.constant_(self.reference_points.bias, 0.0)

    def forward(self, memory: Tensor, padding_mask: Tensor, spatial_shapes: List[Tuple[int, int]],
                query_embed: Optional[Tensor] = None) -> Queries:
        if query_embed is None or query_embed.shape[-1] != 2 * self.d_model:
            raise ValueError(f"StaticQuerySelection needs the detector's query embeddings (Q, {2 * self.d_model}), "
                             f"got {None if query_embed is None else tuple(query_embed.shape)}")
        position, content = torch.split(query_embed, self.d_model, dim=1)
        b = memory.shape[0]
        position = position.unsqueeze(0).expand(b, -1, -1)
        content = content.unsqueeze(0).expand(b, -1, -1)
        return Queries(content, self.reference_points(position), position=position)


class ProposalQuerySelection(QuerySelection):
    """Deformable DETR's two-stage selection: every encoder token proposes a box, scored and refined by the
    encoder-proposal heads; the top num_queries by class channel 0 (the heads are trained class-agnostic
    there) give the reference boxes (detached), and the sine embedding of those boxes in (cx, cy, w, h)
    order -> pos_trans -> pos_trans_norm gives the positional query (first C channels) and the content
    (the other C). Every token's logits and boxes are returned for the encoder loss.

    class_head / box_head: the detector's encoder-proposal heads (its class_embed / bbox_embed at index
    dec_layers), used but not registered here (the detector and the decoder hold them). Parameter names are
    the official checkpoints': enc_output, enc_output_norm, pos_trans, pos_trans_norm."""

    def __init__(self, d_model: int, num_queries: int, class_head: nn.Module, box_head: nn.Module):
        super().__init__()
        self.d_model = d_model
        self.num_queries = num_queries
        self.enc_output = nn.Linear(d_model, d_model)
        self.enc_output_norm = nn.LayerNorm(d_model)
        self.pos_trans = nn.Linear(2 * d_model, 2 * d_model)
        self.pos_trans_norm = nn.LayerNorm(2 * d_model)
        self.heads = (class_head, box_head)  # a tuple: not submodules
        for linear in (self.enc_output, self.pos_trans):
            nn.init.xavier_uniform_(linear.weight)

    def forward(self, memory: Tensor, padding_mask: Tensor, spatial_shapes: List[Tuple[int, int]],
                query_embed: Optional[Tensor] = None) -> Queries:
        _check_enough_tokens(memory, self.num_queries)
        class_head, box_head = self.heads
        _, logits, boxes, _ = score_proposals(memory, padding_mask, spatial_shapes, self.enc_output,
                                              self.enc_output_norm, class_head, box_head)
        topk = torch.topk(logits[..., 0], self.num_queries, dim=1)[1]  # (B, Q)
        anchors = torch.gather(boxes, 1, topk.unsqueeze(-1).expand(-1, -1, 4)).detach()
        embed = gen_sineembed_for_position(anchors.sigmoid(), self.d_model, x_first=True)  # (B, Q, 2C)
        position, content = torch.split(self.pos_trans_norm(self.pos_trans(embed)), self.d_model, dim=2)
        return Queries(content, anchors, position=position, proposal_logits=logits, proposal_boxes=boxes.sigmoid())
