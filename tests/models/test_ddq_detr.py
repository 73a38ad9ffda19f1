"""DDQ-DETR (models/dino/ddq_detr.py, distinct_queries.py, ddq_loss.py): the encoder's distinct query
selection, the attention mask of the dense queries, the decoder's keep-set in both modes, the dense
auxiliary loss, inference, loading DINO weights and the configs. Expected values are worked out by hand
(IoU of shifted boxes) or by naive loops written here."""
import math
import os

import pytest
import torch
from torch import nn
from torchvision.ops import box_convert, box_iou, nms

from engine.config import load_config
from models import build_model
from models.common.postprocess import PostProcess
from models.dino.ddq_detr import DDQDETR
from models.dino.ddq_loss import DDQCriterion, alignment_targets, quality_focal_loss
from models.dino.distinct_queries import DistinctQueryMasks, DistinctQuerySelection, QueryLayout, first_survivors
from util.checkpoint import load_model_state
from util.slconfig import ConfigError

from tiny_configs import ROOT, tiny_args, tiny_batch


def shifted(dx, size=1.0):
    """[0, 0, size, size] shifted by dx along x (xyxy): IoU with the unshifted box = (size - dx) / (size + dx)."""
    return [dx, 0.0, size + dx, size]


# ---- encoder: distinct query selection ---------------------------------------------------------

def test_first_survivors_suppresses_above_the_threshold_and_keeps_score_order():
    # box 1 overlaps box 0 at IoU 0.95 / 1.05 = 0.905 > 0.8 (suppressed); box 2 at 0.8 / 1.2 = 0.667 (kept);
    # box 3 far away; box 4 overlaps box 3 at 0.905 but scores higher, so it suppresses box 3
    boxes = torch.tensor([shifted(0.0), shifted(0.05), shifted(0.2), shifted(5.0), shifted(5.05)])
    scores = torch.tensor([0.9, 0.8, 0.3, 0.5, 0.6])
    index, valid = first_survivors(boxes[None], scores[None], 0.8, count=3)
    assert index.tolist() == [[0, 4, 2]] and valid.all()
    # at 0.95 nothing overlaps that much: all five survive, in score order
    index, valid = first_survivors(boxes[None], scores[None], 0.95, count=5)
    assert index.tolist() == [[0, 1, 4, 3, 2]] and valid.all()


def test_first_survivors_pads_when_fewer_survive():
    boxes = torch.tensor([[shifted(0.0), shifted(0.01), shifted(0.02), shifted(3.0)],
                          [shifted(0.0), shifted(2.0), shifted(4.0), shifted(6.0)]])
    scores = torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]])
    index, valid = first_survivors(boxes, scores, 0.8, count=3)
    assert valid.tolist() == [[True, True, False], [True, True, True]]
    assert index.tolist() == [[0, 3, 0], [3, 2, 1]]  # padded slots hold index 0


def test_first_survivors_equals_nms_over_all_boxes_cut_to_count():
    g = torch.Generator().manual_seed(0)
    centres, sizes = torch.rand(3, 500, 2, generator=g), 0.05 + 0.3 * torch.rand(3, 500, 2, generator=g)
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], -1)
    scores = torch.rand(3, 500, generator=g)
    for iou, count in [(0.8, 50), (0.3, 40), (0.1, 200)]:  # 0.1: few survive, the prefix grows to all boxes
        index, valid = first_survivors(boxes, scores, iou, count)
        for i in range(3):
            expected = nms(boxes[i], scores[i], iou)[:count]
            assert index[i, :len(expected)].tolist() == expected.tolist()
            assert valid[i].sum() == len(expected) and not valid[i, len(expected):].any()


def selection_with_proposals(logits, boxes, d_model=8, num_queries=3, nms_iou=0.8, num_dense=0):
    """A DistinctQuerySelection whose encoder proposals are the given class logits (B, S, K) and box
    logits (B, S, 4) instead of its heads' (the selection's logic on hand-made boxes)."""
    def head():
        return nn.Linear(d_model, logits.shape[-1])
    selection = DistinctQuerySelection(d_model, num_queries, head(), nn.Linear(d_model, 4), nms_iou,
                                       head() if num_dense else None, nn.Linear(d_model, 4) if num_dense else None,
                                       num_dense)
    selection.proposals = lambda memory, mask, shapes: (memory, logits, boxes, torch.zeros_like(boxes))
    return selection


def test_selection_content_is_query_map_of_the_detached_memory_and_pads_with_zeros():
    # three tokens: token 1 covers token 0 at IoU 0.905 and scores higher; token 2 is apart
    xyxy = torch.tensor([shifted(0.0, 0.2), shifted(0.01, 0.2), [0.6, 0.6, 0.8, 0.8]])
    cxcywh = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1)
    boxes = torch.logit(cxcywh)[None]
    logits = torch.tensor([[[0.5, -1.0], [2.0, 0.0], [-3.0, 1.0]]])
    memory = torch.randn(1, 3, 8, requires_grad=True)
    selection = selection_with_proposals(logits, boxes)
    queries = selection(memory, torch.zeros(1, 3, dtype=torch.bool), [(1, 3)])
    # survivors by highest class logit: token 1 (2.0), token 2 (1.0); the third slot is padding
    expected = selection.query_map(memory[0, [1, 2]])
    assert torch.allclose(queries.content[0, :2], expected)
    assert torch.equal(queries.content[0, 2], torch.zeros(8)) and torch.equal(queries.anchors[0, 2], torch.zeros(4))
    assert torch.allclose(queries.anchors[0, :2], boxes[0, [1, 2]])
    assert torch.allclose(queries.proposal_logits[0, :2], logits[0, [1, 2]])
    assert not queries.anchors.requires_grad
    queries.content.sum().backward()
    assert memory.grad is None or not memory.grad.any()  # detached before query_map
    assert selection.query_map.weight.grad is not None


def test_dense_queries_are_the_top_tokens_of_the_second_head_without_nms():
    boxes = torch.zeros(1, 6, 4)  # six identical boxes: NMS would keep one
    logits = torch.arange(6.0).view(1, 6, 1)
    selection = selection_with_proposals(logits, boxes, num_queries=2, num_dense=3)
    with torch.no_grad():
        selection.enc_out_dense_class_embed.weight.zero_()
        selection.enc_out_dense_class_embed.bias.zero_()
    memory = torch.arange(6.0).view(1, 6, 1).expand(1, 6, 8).contiguous()
    with torch.no_grad():
        selection.enc_out_dense_class_embed.weight[0, 0] = -1.0  # dense score = -memory: tokens 0, 1, 2 lead
    selection.train()
    queries = selection(memory, torch.zeros(1, 6, dtype=torch.bool), [(2, 3)])
    assert queries.content.shape == (1, 2 + 3, 8)
    # distinct: one survivor (token 5, the highest logit), then a zero slot; dense: tokens 0, 1, 2
    dense_tokens = selection.query_map(memory[0, [0, 1, 2]])
    assert torch.allclose(queries.content[0, 2:], dense_tokens)
    assert torch.equal(queries.content[0, 1], torch.zeros(8))
    selection.eval()
    assert selection(memory, torch.zeros(1, 6, dtype=torch.bool), [(2, 3)]).content.shape == (1, 2, 8)


# ---- self-attention mask -----------------------------------------------------------------------

def test_mask_isolates_dense_queries_and_keeps_the_denoising_mask_in_its_corner():
    layout = QueryLayout(num_dn=2, num_distinct=3, num_dense=4)
    dn_mask = torch.rand(5, 5) > 0.5
    mask = layout.self_attention_mask(dn_mask, "cpu")
    assert mask.shape == (9, 9)
    assert torch.equal(mask[:5, :5], dn_mask)
    assert mask[5:, :5].all() and mask[:5, 5:].all()  # dense <-> the rest blocked both ways
    assert not mask[5:, 5:].any()  # dense see each other
    assert QueryLayout(0, 3, 0).self_attention_mask(None, "cpu") is None
    assert torch.equal(QueryLayout(2, 3, 0).self_attention_mask(dn_mask, "cpu"), dn_mask)


def ddq_model(seed=0, **overrides):
    torch.manual_seed(seed)
    model, criterion, post = build_model(tiny_args("ddq_detr", **overrides))
    return model, criterion, post


def perturbing(selection, part):
    """Replace the selection's forward by one that adds 1 to the content of `part` ('distinct' or 'dense')."""
    forward = selection.forward

    def perturbed(*args, **kwargs):
        queries = forward(*args, **kwargs)
        content = queries.content.clone()
        q = selection.num_queries
        if part == "distinct":
            content[:, :q] += 1.0
        else:
            content[:, q:] += 1.0
        return queries._replace(content=content)
    return perturbed


@pytest.mark.parametrize("part", ["distinct", "dense"])
def test_dense_and_distinct_queries_do_not_see_each_other(part, monkeypatch):
    model, _, _ = ddq_model(ddq_enc_nms_iou=0.3, ddq_dec_nms_iou=0.1)
    model.train()
    samples, targets = tiny_batch(0)
    torch.manual_seed(5)
    base = model(samples, targets)
    monkeypatch.setattr(model.transformer.query_selection, "forward",
                        perturbing(model.transformer.query_selection, part))
    torch.manual_seed(5)
    changed = model(samples, targets)
    distinct_same = torch.equal(base["pred_logits"], changed["pred_logits"])
    dense_same = all(torch.equal(a["pred_logits"], b["pred_logits"])
                     for a, b in zip(base["dense_outputs"], changed["dense_outputs"]))
    assert (distinct_same, dense_same) == ((True, False) if part == "dense" else (False, True))
    dn = base["dn_meta"]["pad_size"]
    assert dn > 0  # the denoising queries ran too, and are outputs of the distinct stream
    assert torch.equal(base["dn_meta"]["output_known_lbs_bboxes"]["pred_logits"],
                       changed["dn_meta"]["output_known_lbs_bboxes"]["pred_logits"]) == (part == "dense")


# ---- decoder: distinct queries between layers -----------------------------------------------------

def keep_set_hook(tracked, layout=QueryLayout(0, 4, 0)):
    # a score head that reads the score from channel 0 of the layer output
    return DistinctQueryMasks(layout, None, nn.ModuleList([nn.Identity()] * 3), num_heads=2, iou_threshold=0.8,
                              tracked=tracked)


def decoder_state(scores):
    """Layer output (1, 4, 1) carrying the scores, and boxes (1, 4, 4) cxcywh: query 1 overlaps query 0 at
    IoU 0.905; queries 2 and 3 apart."""
    output = torch.tensor(scores).view(1, 4, 1)
    boxes = torch.tensor([[[0.2, 0.2, 0.2, 0.2], [0.21, 0.2, 0.2, 0.2], [0.6, 0.6, 0.1, 0.1],
                           [0.8, 0.2, 0.1, 0.1]]])
    return output, boxes


@pytest.mark.parametrize("tracked", [False, True])
def test_decoder_keep_set_when_query_0_survives(tracked):
    hook = keep_set_hook(tracked)
    mask = hook(0, *decoder_state([0.9, 0.8, 0.5, 0.4]))  # query 1 suppressed by query 0
    kept = torch.tensor([True, False, True, True])
    # released (the official code's row 0): query 0 was kept, so every query counts
    assert hook.distinct[0].tolist() == [(kept if tracked else torch.ones(4, dtype=torch.bool)).tolist()]
    # (i, j) blocked only when neither was kept: here only (1, 1); per image and head
    assert mask.shape == (2, 4, 4)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[1, 1] = True
    assert torch.equal(mask[0], expected) and torch.equal(mask[1], expected)


@pytest.mark.parametrize("tracked", [False, True])
def test_decoder_keep_set_when_query_0_is_suppressed(tracked):
    hook = keep_set_hook(tracked)
    hook(0, *decoder_state([0.8, 0.9, 0.5, 0.4]))  # query 0 suppressed by query 1
    # row 0 of the official mask is then the keep-set itself: both modes agree
    assert hook.distinct[0].tolist() == [[False, True, True, True]]
    # the next layer's NMS runs over the previous keep-set only: query 0 stays out even if it now leads
    mask = hook(1, *decoder_state([0.99, 0.1, 0.5, 0.4]))
    assert hook.distinct[1].tolist() == [[False, True, True, True]]
    assert mask[0, 0, 0] and not mask[0, 0, 1]


def test_decoder_keep_set_leaves_the_denoising_and_dense_blocks_alone():
    layout = QueryLayout(num_dn=2, num_distinct=4, num_dense=3)
    initial = layout.self_attention_mask(torch.rand(6, 6) > 0.5, "cpu")
    hook = DistinctQueryMasks(layout, initial, nn.ModuleList([nn.Identity()]), 1, 0.8, tracked=True)
    output, boxes = decoder_state([0.9, 0.8, 0.5, 0.4])
    pad = lambda x: torch.cat([torch.zeros(1, 2, x.shape[-1]), x, torch.zeros(1, 3, x.shape[-1])], 1)  # noqa: E731
    mask = hook(0, pad(output), pad(boxes))[0]
    block = layout.distinct
    outside = torch.ones(9, 9, dtype=torch.bool)
    outside[block, block] = False
    assert torch.equal(mask[outside], initial[outside])
    assert mask[block, block].sum() == 1 and mask[3, 3]


@pytest.mark.parametrize("mode", ["released", "tracked"])
def test_model_marks_each_layer_after_the_first_with_its_keep_set(mode):
    # at a decoder IoU of 0.01 the tiny model's query 0 survives and suppresses others
    model, criterion, post = ddq_model(dec_layers=3, ddq_enc_nms_iou=0.5, ddq_dec_nms_iou=0.01,
                                       ddq_distinct_set=mode)
    model.eval()
    samples, _ = tiny_batch(0)
    with torch.no_grad():
        out = model(samples)
    assert "query_mask" not in out["aux_outputs"][0]  # layer 1 uses all distinct queries
    masks = [out["aux_outputs"][1]["query_mask"], out["query_mask"]]
    assert all(m.shape == (2, 10) for m in masks)
    assert bool(masks[1].all()) == (mode == "released")
    assert torch.equal(masks[1] & ~masks[0], torch.zeros_like(masks[0]))  # each keep-set within the last
    # inference reports only the queries of the final keep-set
    sizes = torch.tensor([[64, 96], [48, 64]])
    results = post["bbox"](out, sizes)
    for image, result in enumerate(results):
        kept = masks[1][image]
        assert len(result["scores"]) == min(10, int(kept.sum()) * out["pred_logits"].shape[-1])
        h, w = sizes[image].tolist()
        reported = result["boxes"] / torch.tensor([w, h, w, h])
        allowed = box_convert(out["pred_boxes"][image][kept], "cxcywh", "xyxy")
        assert all(torch.isclose(allowed, box, atol=1e-5).all(-1).any() for box in reported)


# ---- inference -----------------------------------------------------------------------------------

def test_inference_runs_only_the_distinct_queries():
    model, _, post = ddq_model()
    assert post["bbox"].nms_iou_threshold <= 0  # no NMS after the model
    model.eval()
    samples, _ = tiny_batch(0)
    with torch.no_grad():
        before = model(samples)
        for module in (model.dense_class_embed, model.dense_bbox_embed,
                       model.transformer.enc_out_dense_class_embed, model.transformer.enc_out_dense_bbox_embed):
            for p in module.parameters():
                p.add_(1.0)
        after = model(samples)
    assert "dense_outputs" not in before and before["pred_logits"].shape[1] == 10
    assert torch.equal(before["pred_logits"], after["pred_logits"])
    assert torch.equal(before["pred_boxes"], after["pred_boxes"])


def test_postprocess_query_mask_reports_only_the_named_queries():
    logits = torch.tensor([[[5.0, 0.0], [4.0, 0.0], [-1.0, -2.0]]])
    boxes = torch.rand(1, 3, 4) * 0.5 + 0.25
    out = {"pred_logits": logits, "pred_boxes": boxes, "query_mask": torch.tensor([[False, True, True]])}
    result = PostProcess(num_select=3)(out, torch.tensor([[10, 10]]))[0]
    assert result["scores"].tolist() == pytest.approx(torch.sigmoid(torch.tensor([4.0, 0.0, -1.0])).tolist())
    del out["query_mask"]
    assert PostProcess(num_select=3)(out, torch.tensor([[10, 10]]))[0]["scores"][0] == pytest.approx(
        torch.sigmoid(torch.tensor(5.0)).item())


# ---- dense auxiliary loss -------------------------------------------------------------------------

def test_alignment_targets_match_a_naive_loop():
    g = torch.Generator().manual_seed(1)
    prob, iou = torch.rand(9, generator=g), torch.rand(9, generator=g)
    group = torch.tensor([0, 0, 0, 2, 2, 1, 3, 3, 3])
    ours = alignment_targets(prob, iou, group, alpha=1.0, beta=6.0)
    for i in range(9):
        same = [j for j in range(9) if group[j] == group[i]]
        metric = [float(prob[j]) * float(iou[j]) ** 6 for j in same]
        expected = float(prob[i]) * float(iou[i]) ** 6 / (max(metric) + 1e-7) * max(float(iou[j]) for j in same)
        assert ours[i].item() == pytest.approx(expected, rel=1e-5)
    # the best pair of each group gets (about) its group's best IoU
    assert ours[[0, 1, 2]].max().item() == pytest.approx(iou[[0, 1, 2]].max().item(), rel=1e-4)


def naive_qfl(logits, positives, beta=2.0):
    """Sum over every element, one python float at a time. positives: {(b, q, c): t}."""
    total = 0.0
    for (b, q, c), x in ((idx, float(v)) for idx, v in zip(torch.cartesian_prod(
            *[torch.arange(s) for s in logits.shape]).tolist(), logits.flatten())):
        p = 1 / (1 + math.exp(-x))
        t = positives.get((b, q, c), 0.0)
        bce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
        total += bce * abs(t - p) ** beta
    return total


def test_quality_focal_loss_matches_a_naive_loop():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 3, generator=g)
    pos = (torch.tensor([0, 1, 1]), torch.tensor([2, 0, 4]), torch.tensor([1, 2, 0]))
    target = torch.tensor([0.7, 0.2, 0.95])
    ours = quality_focal_loss(logits, pos, target, beta=2.0)
    positives = {(int(b), int(q), int(c)): float(t) for b, q, c, t in zip(*pos, target)}
    assert ours.item() == pytest.approx(naive_qfl(logits, positives), rel=1e-5)


def dense_criterion(k=4):
    from models.common.criterion import SetKind
    from models.common.matcher import HungarianMatcher
    from models.dino.aligndetr import OneToManyMatcher
    from models.dino.ddq_loss import ddq_set_specs
    weights = {kind: {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0} for kind in SetKind}
    return DDQCriterion(3, HungarianMatcher(), ddq_set_specs(1, True, False, True), weights,
                        OneToManyMatcher(max_positive_fraction=1.0), dense_k=k)


def test_top_k_assignment_gives_each_ground_truth_min_k_and_dense_over_boxes_queries():
    g = torch.Generator().manual_seed(3)
    preds = {"pred_logits": torch.randn(1, 9, 3, generator=g), "pred_boxes": torch.rand(1, 9, 4, generator=g) * 0.5
             + 0.25}
    targets = [{"labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.4, 0.2, 0.1]])}]
    matcher = dense_criterion().dense_matcher
    src, tgt = matcher(preds, targets, k=4)[0]
    assert len(set(src.tolist())) == len(src)  # a query at most once
    assert sorted(tgt.tolist()) == [0] * 4 + [1] * 4  # k = min(4, 9 // 2) = 4
    targets = [{"labels": torch.tensor([0, 1, 2]), "boxes": torch.rand(3, 4, generator=g) * 0.3 + 0.3}]
    src, tgt = matcher(preds, targets, k=4)[0]
    assert sorted(tgt.tolist()) == [0] * 3 + [1] * 3 + [2] * 3  # k = min(4, 9 // 3) = 3


def test_dense_losses_match_a_naive_computation():
    crit = dense_criterion()
    g = torch.Generator().manual_seed(4)
    preds = {"pred_logits": torch.randn(2, 8, 3, generator=g),
             "pred_boxes": torch.rand(2, 8, 4, generator=g) * 0.4 + 0.3}
    targets = [{"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.3], [0.4, 0.6, 0.2, 0.3]])},
               {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.45, 0.5, 0.3, 0.2]])}]
    losses = crit.dense_losses(preds, targets)
    indices = crit.dense_matcher(preds, targets, k=4)
    positives, giou_terms, targets_sum = {}, 0.0, 0.0
    for b, ((src, tgt), t) in enumerate(zip(indices, targets)):
        pairs = []
        for q, j in zip(src.tolist(), tgt.tolist()):
            pb = _xyxy(preds["pred_boxes"][b, q])
            tb = _xyxy(t["boxes"][j])
            iou = box_iou(pb[None], tb[None]).item()
            p = torch.sigmoid(preds["pred_logits"][b, q, t["labels"][j]]).item()
            pairs.append((q, j, iou, p * iou ** 6, _giou(pb, tb)))
        for q, j, iou, metric, giou in pairs:
            same = [x for x in pairs if x[1] == j]
            soft = metric / (max(x[3] for x in same) + 1e-7) * max(x[2] for x in same)
            positives[(b, q, int(t["labels"][j]))] = soft
            giou_terms += (1 - giou) * soft
            targets_sum += soft
    normaliser = max(targets_sum, 1.0)
    assert losses["loss_ce"].item() == pytest.approx(naive_qfl(preds["pred_logits"], positives) / normaliser,
                                                     rel=1e-5)
    assert losses["loss_giou"].item() == pytest.approx(giou_terms / normaliser, rel=1e-5)


def _xyxy(cxcywh):
    cx, cy, w, h = cxcywh.tolist()
    return torch.tensor([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def _giou(a, b):
    """GIoU of two xyxy boxes, by hand."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = float(iw * ih)
    area = lambda x: float((x[2] - x[0]) * (x[3] - x[1]))  # noqa: E731
    union = area(a) + area(b) - inter
    hull = float((max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1])))
    return inter / union - (hull - union) / hull


def test_training_losses_and_weights(seeded):
    model, criterion, _ = ddq_model(ddq_enc_nms_iou=0.3, ddq_dec_nms_iou=0.1)
    model.train()
    samples, targets = tiny_batch(0)
    losses = criterion(model(samples, targets), targets)
    dense_keys = {f"{k}{s}" for k in ("loss_ce", "loss_giou") for s in ("_dense_interm", "_dense_0", "_dense_1")}
    assert dense_keys <= set(losses) and "loss_bbox_dense_0" not in losses
    assert {criterion.weight_dict[k] for k in dense_keys if k.startswith("loss_ce")} == {1.0}
    assert {criterion.weight_dict[k] for k in dense_keys if k.startswith("loss_giou")} == {2.0}
    total = sum(losses[k] * w for k, w in criterion.weight_dict.items())
    total.backward()
    assert torch.isfinite(total)
    selection = model.transformer.query_selection
    for name, module in [("dense class head 0", model.dense_class_embed[0]),
                         ("dense box head 1", model.dense_bbox_embed[1]), ("query_map", selection.query_map),
                         ("dense encoder head", selection.enc_out_dense_class_embed)]:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), name


# ---- weights and configs --------------------------------------------------------------------------

def test_dino_checkpoint_loads_with_only_ddqs_own_parameters_reported():
    dino, _, _ = build_model(tiny_args())
    model, _, _ = ddq_model()
    assert isinstance(model, DDQDETR)
    result = load_model_state(model, dino.state_dict(), strict=False)
    own = ("transformer.query_map.", "transformer.enc_out_dense_class_embed.", "transformer.enc_out_dense_bbox_embed.",
           "dense_class_embed.", "dense_bbox_embed.", "transformer.decoder.dense_bbox_embed.")
    assert result.missing_keys and all(k.startswith(own) for k in result.missing_keys)
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in result.missing_keys if k.startswith("transformer.")} >= {
        "transformer.query_map", "transformer.enc_out_dense_class_embed", "transformer.enc_out_dense_bbox_embed"}
    assert result.unexpected_keys == ["transformer.tgt_embed.weight"]
    # the official layout's extra heads: one dense class / box pair for the encoder and one per decoder layer
    layers = len(model.transformer.decoder.layers)
    assert len(model.dense_class_embed) == len(model.dense_bbox_embed) == layers
    assert model.dense_bbox_embed is model.transformer.decoder.dense_bbox_embed
    assert len({id(m) for m in [*model.dense_class_embed, selection_head(model)]}) == layers + 1  # unshared
    for k, v in dino.state_dict().items():
        if k in model.state_dict():
            assert torch.equal(model.state_dict()[k], v), k


def selection_head(model):
    return model.transformer.query_selection.enc_out_dense_class_embed


def config(name, **options):
    return load_config(os.path.join(ROOT, "config", name), options)


def test_ddq_configs_are_dino_with_the_recipe_and_ddq_keys():
    dino, ours = config("DINO/DINO_4scale.py"), config("DDQ/DDQ_4scale.py")
    changed = {k for k in dino if k in ours and dino[k] != ours[k]}
    assert changed - {"modelname"} == {"lr", "weight_decay", "lr_warmup_iters", "dn_box_noise_scale"}
    assert set(dino) - set(ours) <= {"embed_init_tgt", "criterion_type", "aligndetr_alpha", "aligndetr_gamma",
                                     "aligndetr_tau", "o2m_k"}
    recipe = ("lr", "weight_decay", "lr_warmup_iters", "lr_warmup_factor", "dn_box_noise_scale")
    assert tuple(ours[k] for k in recipe) == (2e-4, 0.05, 2000, 1e-4, 1.0)
    assert (ours["ddq_enc_nms_iou"], ours["ddq_dec_nms_iou"], ours["ddq_dense_ratio"], ours["ddq_dense_k"]) == (
        0.8, 0.8, 1.5, 4)
    assert ours["ddq_distinct_set"] == "released" and ours["nms_iou_threshold"] <= 0
    five = config("DDQ/DDQ_5scale.py")
    assert {k for k in ours if ours[k] != five[k]} == {"num_feature_levels", "return_interm_indices"}


def test_ddq_keys_are_checked():
    with pytest.raises(ConfigError, match="ddq_distinct_set"):
        config("DDQ/DDQ_4scale.py", ddq_distinct_set="row0")
    with pytest.raises(ConfigError, match="ddq_dense_ratio=0.0001 gives no dense query"):
        config("DDQ/DDQ_4scale.py", ddq_dense_ratio=0.0001)
    with pytest.raises(ConfigError, match="embed_init_tgt"):
        config("DDQ/DDQ_4scale.py", embed_init_tgt=True)
    with pytest.raises(ConfigError, match="ddq_enc_nms_iou"):
        config("DINO/DINO_4scale.py", ddq_enc_nms_iou=0.5)
