import torch
from torch import nn

from models.dino.dn_components import build_cdn_attn_mask, cdn_group_count, dn_post_process, prepare_for_cdn


def test_group_count_follows_dinos_budget():
    assert cdn_group_count(100, 5) == 20  # 200 // (2 * 5)
    assert cdn_group_count(100, 0) == 1
    assert cdn_group_count(100, 150) == 1
    assert cdn_group_count(20, 3) == 40  # DINO's quirk: a budget under 100 is the group count


def test_attention_mask_blocks_leaks():
    single, groups, nq = 2, 3, 5
    mask = build_cdn_attn_mask(single, groups, nq, "cpu")
    pad = 2 * single * groups
    assert mask.shape == (pad + nq, pad + nq)
    assert mask[pad:, :pad].all()  # matching queries never see denoising ones
    assert not mask[pad:, pad:].any()
    assert not mask[:, pad:].any()  # everyone sees the matching queries
    for g in range(groups):
        lo, hi = 2 * single * g, 2 * single * (g + 1)
        assert not mask[lo:hi, lo:hi].any()  # a group sees itself
        assert mask[lo:hi, :lo].all() and mask[lo:hi, hi:pad].all()  # and no other group


def test_noised_boxes_positive_inside_negative_outside():
    torch.manual_seed(0)
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.6, 0.1, 0.3]])
    targets = [{"labels": torch.tensor([1, 2]), "boxes": boxes}, {"labels": torch.tensor([3]), "boxes": boxes[:1]}]
    label_enc = nn.Embedding(8, 16)
    lab, box, mask, meta = prepare_for_cdn(targets, 100, 0.0, 0.4, 10, 7, 16, label_enc)
    groups = meta["num_dn_group"]
    assert groups == 50 and meta["pad_size"] == 2 * 2 * groups
    assert lab.shape == (2, 200, 16) and box.shape == (2, 200, 4) and mask.shape == (210, 210)
    b = box.sigmoid()
    for g in range(groups):
        base = g * 4
        pos = b[0, base:base + 2]
        neg = b[0, base + 2:base + 4]
        # corner shifts: positives by < 0.4 * half size, negatives by 0.4..0.8 half size
        pos_shift = (pos[:, :2] - boxes[:, :2]).abs()
        assert (pos_shift <= 0.4 * boxes[:, 2:] / 2 + 1e-3).all()
        assert not torch.allclose(neg, boxes, atol=1e-4)
    # image 1 has one box: its second slot of every half stays empty (zeros)
    assert (lab[1, 1] == 0).all() and (lab[1, 0] != 0).any()
    # labels are those of the ground truth when no label noise
    assert torch.equal(lab[0, 0], label_enc.weight[1]) and torch.equal(lab[0, 3], label_enc.weight[2])


def test_dn_post_process_splits_denoising_part():
    cls = torch.randn(3, 2, 7, 5)
    box = torch.rand(3, 2, 7, 4)
    meta = {"pad_size": 4, "num_dn_group": 1}
    c, b = dn_post_process(cls, box, meta)
    assert c.shape == (3, 2, 3, 5) and torch.equal(c, cls[:, :, 4:])
    known = meta["output_known_lbs_bboxes"]
    assert torch.equal(known["pred_boxes"], box[-1][:, :4]) and len(known["aux_outputs"]) == 2
