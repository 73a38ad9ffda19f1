"""DINO: DETR with improved denoising anchor boxes, with AugDETR's optional HAE and EMCA.

DINO (this module) holds the backbone, the input projections to the transformer width,
the shared class/box heads and the denoising label embedding. SetCriterion (losses) lives
in criterion.py and is re-exported here.
"""
import copy
import math
import os
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from util.misc import NestedTensor, to_nested_tensor

from ..common.backbones import build_backbone
from ..common.criterion import SetCriterion, build_weight_dict
from ..common.layers import MLP, inverse_sigmoid
from ..common.matcher import build_matcher
from ..common.postprocess import PostProcess
from ..registry import CONFIG_DIR, register_detector
from .aligndetr import ALIGNDETR_KEYS, build_aligndetr_criterion
from .augdetr.schema import AUGDETR_KEYS
from .deformable_transformer import DeformableTransformer, build_deformable_transformer
from .dn_components import dn_post_process, prepare_for_cdn
from .schema import DEFORMABLE_KEYS, DINO_KEYS

__all__ = ["DINO", "SetCriterion", "PostProcess", "build_dino"]


class DINO(nn.Module):
    """The detector. forward(samples, targets) -> dict:
    'pred_logits' (B, Q, num_classes), 'pred_boxes' (B, Q, 4) normalised cxcywh,
    'aux_outputs' (earlier decoder layers), 'interm_outputs' (two-stage proposals),
    'dn_meta' (denoising bookkeeping; None outside training).
    """

    def __init__(self, backbone: nn.Module, transformer: DeformableTransformer, num_classes: int,
                 num_queries: int, num_feature_levels: int = 4, aux_loss: bool = True, dn_number: int = 100,
                 dn_box_noise_scale: float = 0.4, dn_label_noise_ratio: float = 0.5, dn_labelbook_size: int = 100,
                 dec_pred_class_embed_share: bool = True, dec_pred_bbox_embed_share: bool = True,
                 two_stage_class_embed_share: bool = False, two_stage_bbox_embed_share: bool = False):
        super().__init__()
        hidden_dim = transformer.d_model
        self.backbone = backbone
        self.transformer = transformer
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.hidden_dim = hidden_dim
        self.num_feature_levels = num_feature_levels
        self.aux_loss = aux_loss
        self.dn_number = dn_number
        self.dn_box_noise_scale = dn_box_noise_scale
        self.dn_label_noise_ratio = dn_label_noise_ratio
        self.dn_labelbook_size = dn_labelbook_size
        self.label_enc = nn.Embedding(dn_labelbook_size + 1, hidden_dim)

        # backbone levels get a 1x1 conv; extra levels a 3x3 stride-2 conv on the previous one
        in_channels = list(backbone.num_channels)
        projs = [nn.Sequential(nn.Conv2d(c, hidden_dim, 1), nn.GroupNorm(32, hidden_dim)) for c in in_channels]
        prev = in_channels[-1]
        for _ in range(num_feature_levels - len(in_channels)):
            projs.append(nn.Sequential(nn.Conv2d(prev, hidden_dim, 3, stride=2, padding=1),
                                       nn.GroupNorm(32, hidden_dim)))
            prev = hidden_dim
        self.input_proj = nn.ModuleList(projs)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)

        class_head = nn.Linear(hidden_dim, num_classes)
        box_head = MLP(hidden_dim, hidden_dim, 4, 3)
        nn.init.constant_(class_head.bias, -math.log((1 - 0.01) / 0.01))  # prior probability 0.01
        nn.init.constant_(box_head.layers[-1].weight, 0)
        nn.init.constant_(box_head.layers[-1].bias, 0)
        n_dec = transformer.num_decoder_layers

        def heads(head, share):
            return nn.ModuleList([head if share else copy.deepcopy(head) for _ in range(n_dec)])

        self.bbox_embed = heads(box_head, dec_pred_bbox_embed_share)
        self.class_embed = heads(class_head, dec_pred_class_embed_share)
        self.transformer.decoder.bbox_embed = self.bbox_embed
        self.transformer.decoder.class_embed = self.class_embed
        self.transformer.enc_out_bbox_embed = box_head if two_stage_bbox_embed_share else copy.deepcopy(box_head)
        self.transformer.enc_out_class_embed = class_head if two_stage_class_embed_share else copy.deepcopy(class_head)

    def multiscale_features(self, samples: NestedTensor):
        """Backbone levels plus extra strided levels -> per level (B, C, H_l, W_l), masks, positions."""
        features, poss = self.backbone(samples)
        srcs, masks = [], []
        for proj, feat in zip(self.input_proj, features):
            src, mask = feat.decompose()
            srcs.append(proj(src))
            masks.append(mask)
        for lvl in range(len(features), self.num_feature_levels):
            src = self.input_proj[lvl](features[-1].tensors if lvl == len(features) else srcs[-1])
            mask = F.interpolate(samples.mask[None].float(), size=src.shape[-2:]).to(torch.bool)[0]
            srcs.append(src)
            masks.append(mask)
            poss.append(self.backbone[1](NestedTensor(src, mask)).to(src.dtype))
        return srcs, masks, poss

    def forward(self, samples, targets: Optional[List[Dict[str, Tensor]]] = None) -> Dict:
        samples = to_nested_tensor(samples)
        srcs, masks, poss = self.multiscale_features(samples)
        dn_meta = None
        query_label = query_bbox = attn_mask = None
        if self.training and self.dn_number > 0 and targets is not None:
            query_label, query_bbox, attn_mask, dn_meta = prepare_for_cdn(
                targets, self.dn_number, self.dn_label_noise_ratio, self.dn_box_noise_scale, self.num_queries,
                self.num_classes, self.hidden_dim, self.label_enc)
        hs, reference, hs_enc, ref_enc, init_box_proposal = self.transformer(srcs, masks, poss, query_bbox,
                                                                             query_label, attn_mask)
        # keeps label_enc in the graph when no denoising runs (DDP needs every parameter used)
        hs[0] = hs[0] + self.label_enc.weight[0, 0] * 0.0

        # layer i's boxes refine layer i-1's undetached boxes ("look forward twice")
        coords = torch.stack([(box_head(h) + inverse_sigmoid(ref)).sigmoid()
                              for ref, box_head, h in zip(reference[:-1], self.bbox_embed, hs)])
        logits = torch.stack([cls_head(h) for cls_head, h in zip(self.class_embed, hs)])
        logits, coords = dn_post_process(logits, coords, dn_meta)
        out = {"pred_logits": logits[-1], "pred_boxes": coords[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], coords[:-1])]
        interm_logits = self.transformer.enc_out_class_embed(hs_enc[-1])
        out["interm_outputs"] = {"pred_logits": interm_logits, "pred_boxes": ref_enc[-1]}
        out["interm_outputs_for_matching_pre"] = {"pred_logits": interm_logits, "pred_boxes": init_box_proposal}
        out["dn_meta"] = dn_meta
        return out


def build_dino_criterion(args):
    """DINO's criterion, or AlignDETR's (criterion_type='aligndetr': only the loss and the matching differ)."""
    if args.criterion_type == "aligndetr":
        return build_aligndetr_criterion(args)
    return SetCriterion(args.num_classes, build_matcher(args), build_weight_dict(args), focal_alpha=args.focal_alpha)


@register_detector("dino", key_groups=(DEFORMABLE_KEYS, DINO_KEYS, AUGDETR_KEYS, ALIGNDETR_KEYS),
                   defaults_file=os.path.join(CONFIG_DIR, "DINO", "DINO_4scale.py"),
                   summary="DINO; AugDETR's HAE / EMCA (use_hae, use_emca) and AlignDETR's loss (criterion_type) "
                           "as options", build_criterion=build_dino_criterion)
def build_dino(args):
    """Map the checked config onto DINO, its criterion and post-processor (the deformable-attention
    backend is the caller's choice, see models.select_msda_backend)."""
    model = DINO(build_backbone(args), build_deformable_transformer(args), num_classes=args.num_classes,
                 num_queries=args.num_queries, num_feature_levels=args.num_feature_levels, aux_loss=args.aux_loss,
                 dn_number=args.dn_number if args.use_dn else 0,
                 dn_box_noise_scale=args.dn_box_noise_scale, dn_label_noise_ratio=args.dn_label_noise_ratio,
                 dn_labelbook_size=args.dn_labelbook_size,
                 dec_pred_class_embed_share=args.dec_pred_class_embed_share,
                 dec_pred_bbox_embed_share=args.dec_pred_bbox_embed_share,
                 two_stage_class_embed_share=args.two_stage_class_embed_share,
                 two_stage_bbox_embed_share=args.two_stage_bbox_embed_share)
    criterion = build_dino_criterion(args)
    postprocessors = {"bbox": PostProcess(args.num_select, args.nms_iou_threshold)}
    return model, criterion, postprocessors
