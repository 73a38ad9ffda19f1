"""DDQ-DETR's parts of the deformable transformer (Zhang et al., "Dense Distinct Query for End-to-End Object
Detection", CVPR 2023, as its official code and mmdetection's port implement it on DINO).

* `DistinctQuerySelection` (the query selection): class-agnostic NMS over every encoder proposal of an image,
  the first num_queries survivors as the distinct queries; in training also the top dense_ratio x
  num_queries proposals of a second encoder head, without NMS, as dense queries after them.
* `DistinctQueryMasks` (the decoder's mask_update hook, one per forward): after each decoder layer but the
  last, NMS over the distinct queries' refined boxes decides which queries stay distinct, rewrites their
  block of the self-attention mask for the next layer and names the queries the next layer's loss and the
  inference use.
* `DenseQueryDecoder`: DINO's decoder whose dense queries refine their boxes with their own heads.

Along the decoder's query axis the queries are laid out as [denoising | distinct | dense] (`QueryLayout`);
the dense queries see only each other (and nothing else sees them), so the distinct queries compute exactly
what they would without them.
"""
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.profiler import record_function
from torchvision.ops import batched_nms, box_convert

from ..common.layers import at_least_fp32, inverse_sigmoid
from .query_selection import MixedQuerySelection, Queries
from .transformer_layers import DeformableDecoder


def first_survivors(boxes: Tensor, scores: Tensor, iou_threshold: float, count: int) -> Tuple[Tensor, Tensor]:
    """Class-agnostic greedy NMS within each image, and its first `count` survivors in score order.

    boxes (B, S, 4) xyxy, scores (B, S) -> (index (B, count) int64 into S, valid (B, count) bool): valid is
    False (and the index 0) in the slots past an image's last survivor.

    Greedy NMS decides a box's fate from the higher-scored boxes alone, so NMS over an image's top-m boxes
    gives exactly the survivors among them: m starts at 2 * count and doubles until every image has `count`
    survivors or all its boxes are in. The result equals NMS over all S boxes cut to `count`, at a cost that
    grows with count * m instead of S^2 (at 800x1333, S is about 22k). Each round is one torchvision
    batched_nms call over all images; boxes are visited in `scores` order (ties: lower index first).
    """
    num_images, num_boxes = scores.shape
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # (B, S)
    m = min(num_boxes, 2 * count)
    while True:
        top = order[:, :m]  # (B, m)
        candidates = torch.gather(boxes, 1, top[..., None].expand(-1, -1, 4)).reshape(-1, 4)
        # strictly decreasing stand-in scores, so that NMS visits the boxes in `order` whatever the ties
        rank = torch.arange(m, 0, -1, device=boxes.device, dtype=boxes.dtype).repeat(num_images)
        image = torch.arange(num_images, device=boxes.device).repeat_interleave(m)
        kept = batched_nms(candidates, rank, image, iou_threshold).sort().values  # by image, then by score
        kept_image = kept // m
        survivors = torch.bincount(kept_image, minlength=num_images)
        if m == num_boxes or bool((survivors >= count).all()):
            break
        m = min(num_boxes, 2 * m)
    position = torch.arange(len(kept), device=boxes.device) - (survivors.cumsum(0) - survivors)[kept_image]
    first = position < count
    index = torch.zeros(num_images, count, dtype=torch.long, device=boxes.device)
    valid = torch.zeros(num_images, count, dtype=torch.bool, device=boxes.device)
    index[kept_image[first], position[first]] = top.reshape(-1)[kept[first]]
    valid[kept_image[first], position[first]] = True
    return index, valid


def nms_keep(boxes: Tensor, scores: Tensor, candidates: Tensor, iou_threshold: float) -> Tensor:
    """Class-agnostic NMS within each image over its candidate queries: boxes (B, Q, 4) cxcywh, scores (B, Q),
    candidates (B, Q) bool -> kept (B, Q) bool (a subset of the candidates). One batched_nms call."""
    image, query = torch.nonzero(candidates, as_tuple=True)
    xyxy = box_convert(at_least_fp32(boxes[image, query]), "cxcywh", "xyxy")
    kept = batched_nms(xyxy, at_least_fp32(scores[image, query]), image, iou_threshold)
    keep = torch.zeros_like(candidates)
    keep[image[kept], query[kept]] = True
    return keep


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """x (B, S, C), index (B, N) -> (B, N, C)."""
    return torch.gather(x, 1, index[..., None].expand(-1, -1, x.shape[-1]))


class DistinctQuerySelection(MixedQuerySelection):
    """DDQ-DETR's query selection (see the module docstring).

    Distinct queries (num_queries): the encoder head (class_head, box_head) scores and refines every token's
    proposal as DINO's does; class-agnostic NMS at nms_iou over the boxes, by the highest class logit, keeps
    the first num_queries survivors (`first_survivors`). Their content is `query_map` (a Linear) of the last
    encoder layer's output at their tokens, detached before the map; their anchors are their boxes,
    detached. When fewer survive, the remaining slots are zeros (content, anchor logits: a centred box of
    half the image, proposal logits), as the official code pads.
    Dense queries (num_dense, training only): a second encoder head (dense_class_head, dense_box_head) scores
    the same tokens; its top num_dense by highest class logit, no NMS, get content and anchors the same way.

    Returns Queries over [distinct | dense]: content, anchors, proposal_logits and proposal_boxes (the
    encoder heads' predictions for the selected tokens, undetached, supervised by the encoder loss and
    the dense auxiliary loss). Parameter names: DINO's (enc_output, enc_output_norm, enc_out_class_embed,
    enc_out_bbox_embed; no tgt_embed), plus query_map, enc_out_dense_class_embed, enc_out_dense_bbox_embed."""

    def __init__(self, d_model: int, num_queries: int, class_head: nn.Module, box_head: nn.Module, nms_iou: float,
                 dense_class_head: Optional[nn.Module] = None, dense_box_head: Optional[nn.Module] = None,
                 num_dense: int = 0):
        super().__init__(d_model, num_queries, class_head, box_head, learned_content=False)
        if num_dense and (dense_class_head is None or dense_box_head is None):
            raise ValueError("dense queries need the dense encoder heads")
        self.nms_iou = nms_iou
        self.num_dense = num_dense
        self.query_map = nn.Linear(d_model, d_model)
        self.enc_out_dense_class_embed = dense_class_head if num_dense else None
        self.enc_out_dense_bbox_embed = dense_box_head if num_dense else None

    def forward(self, memory: Tensor, padding_mask: Tensor, spatial_shapes: List[Tuple[int, int]],
                query_embed: Optional[Tensor] = None) -> Queries:
        output_memory, logits, boxes, proposals = self.proposals(memory, padding_mask, spatial_shapes)
        with torch.no_grad(), record_function("ddq.encoder_nms"):
            xyxy = box_convert(at_least_fp32(boxes).sigmoid(), "cxcywh", "xyxy")
            index, valid = first_survivors(xyxy, at_least_fp32(logits.max(-1).values), self.nms_iou, self.num_queries)
        keep = valid[..., None]
        content = torch.where(keep, self.query_map(gather_tokens(memory.detach(), index)), 0.0)
        anchors = torch.where(keep, gather_tokens(boxes, index), 0.0)
        parts = [(content, anchors, torch.where(keep, gather_tokens(logits, index), 0.0))]
        if self.training and self.num_dense:
            parts.append(self.dense_queries(memory, output_memory, proposals))
        content, anchors, proposal_logits = (torch.cat(p, 1) for p in zip(*parts))
        return Queries(content, anchors.detach(), proposal_logits=proposal_logits, proposal_boxes=anchors.sigmoid())

    def dense_queries(self, memory: Tensor, output_memory: Tensor, proposals: Tensor):
        """(content (B, E, C), anchor logits (B, E, 4) undetached, class logits (B, E, K)) of the top E = num_dense
        tokens by the dense head's highest class logit."""
        if memory.shape[1] < self.num_dense:
            raise ValueError(f"{self.num_dense} dense queries exceed the {memory.shape[1]} encoder tokens of this "
                             f"batch: use larger images or a smaller ddq_dense_ratio")
        logits = self.enc_out_dense_class_embed(output_memory)
        boxes = self.enc_out_dense_bbox_embed(output_memory) + proposals
        index = torch.topk(logits.max(-1).values, self.num_dense, dim=1).indices
        return (self.query_map(gather_tokens(memory.detach(), index)), gather_tokens(boxes, index),
                gather_tokens(logits, index))


@dataclass(frozen=True)
class QueryLayout:
    """The decoder's queries: [denoising (num_dn) | distinct (num_distinct) | dense (num_dense)]."""
    num_dn: int
    num_distinct: int
    num_dense: int

    @property
    def total(self) -> int:
        return self.num_dn + self.num_distinct + self.num_dense

    @property
    def distinct(self) -> slice:
        return slice(self.num_dn, self.num_dn + self.num_distinct)

    @property
    def dense(self) -> slice:
        return slice(self.num_dn + self.num_distinct, self.total)

    def self_attention_mask(self, dn_mask: Optional[Tensor], device) -> Optional[Tensor]:
        """(total, total) bool, True = blocked: dn_mask (the denoising mask over [denoising | distinct], or
        None) in its corner, and the dense queries cut off from every other query both ways. None when
        nothing is blocked (no denoising, no dense queries)."""
        if dn_mask is None and self.num_dense == 0:
            return None
        mask = torch.zeros(self.total, self.total, dtype=torch.bool, device=device)
        if dn_mask is not None:
            mask[:dn_mask.shape[0], :dn_mask.shape[1]] = dn_mask
        mask[self.dense, :self.dense.start] = True
        mask[:self.dense.start, self.dense] = True
        return mask


class DistinctQueryMasks:
    """DDQ-DETR's distinct query selection between decoder layers: the decoder's mask_update hook for one
    forward.

    After layer l (all but the last): the distinct queries' scores are score_heads[l] (the decoder's class
    heads) on the layer's output, highest class logit; class-agnostic NMS at iou_threshold over the
    current candidates' refined boxes keeps K_l. The next layer's mask blocks (i, j) of the distinct block
    when neither i nor j is in K_l (kept queries see every distinct query; the others see the kept ones);
    the rest of `initial_mask` (denoising, dense) stays. `distinct[l]` (B, Q) bool: the queries layer l + 1's
    loss uses (and, for the last layer, the inference), also the next NMS's candidates:
      * tracked: K_l;
      * released (the official code, jshilong/DDQ#14): row 0 of the new mask, read back: K_l when query 0
        was suppressed, otherwise every distinct query (query 0 sees them all). The published numbers
        come from this behaviour.
    """

    def __init__(self, layout: QueryLayout, initial_mask: Optional[Tensor], score_heads: nn.ModuleList,
                 num_heads: int, iou_threshold: float, tracked: bool):
        self.layout = layout
        self.initial_mask = initial_mask
        self.score_heads = score_heads
        self.num_heads = num_heads
        self.iou_threshold = iou_threshold
        self.tracked = tracked
        self.distinct: List[Tensor] = []

    def __call__(self, layer_id: int, output: Tensor, boxes: Tensor) -> Tensor:
        """output (B, N, C) layer layer_id's (before the final norm), boxes (B, N, 4) its refined boxes ->
        the next layer's mask (B * num_heads, N, N)."""
        block = self.layout.distinct
        with torch.no_grad(), record_function("ddq.decoder_nms"):
            scores = self.score_heads[layer_id](output[:, block]).max(-1).values  # (B, Q)
            candidates = self.distinct[-1] if self.distinct else torch.ones_like(scores, dtype=torch.bool)
            kept = nms_keep(boxes[:, block], scores, candidates, self.iou_threshold)
        self.distinct.append(kept if self.tracked else kept | kept[:, :1])
        num_images, n = output.shape[0], self.layout.total
        if self.initial_mask is None:
            mask = torch.zeros(num_images, n, n, dtype=torch.bool, device=output.device)
        else:
            mask = self.initial_mask.expand(num_images, n, n).clone()
        mask[:, block, block] = ~(kept[:, :, None] | kept[:, None, :])
        return mask.repeat_interleave(self.num_heads, 0)


class DenseQueryDecoder(DeformableDecoder):
    """DINO's decoder (DeformableDecoder) whose last num_dense queries, in training (DDQ-DETR's dense
    queries, which the query selection adds in training only), refine their boxes with their own heads:
    dense_bbox_embed[l] for layer l."""

    def __init__(self, *args, dense_box_heads: Optional[nn.ModuleList] = None, num_dense: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        if num_dense and (dense_box_heads is None or len(dense_box_heads) < self.num_layers):
            raise ValueError(f"dense queries need one dense box head per decoder layer ({self.num_layers})")
        self.dense_bbox_embed = dense_box_heads if num_dense else None
        self.num_dense = num_dense

    def head_modules(self) -> List[nn.Module]:
        return super().head_modules() + ([self.dense_bbox_embed] if self.dense_bbox_embed is not None else [])

    def refine(self, layer_id: int, output: Tensor, reference_points: Tensor) -> Tensor:
        n = self.num_dense if self.training else 0
        if n == 0:
            return super().refine(layer_id, output, reference_points)
        distinct = super().refine(layer_id, output[:, :-n], reference_points[:, :-n])
        delta = self.dense_bbox_embed[layer_id](output[:, -n:])
        dense = (delta + inverse_sigmoid(reference_points[:, -n:], self.logit_eps)).sigmoid()
        return torch.cat([distinct, dense], 1)
