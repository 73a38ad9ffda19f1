import pytest
import torch

from models import build_model

from tiny_configs import MODEL, tiny_args, tiny_batch


def total_loss(criterion, losses):
    return sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict)


@pytest.mark.parametrize("levels", [4, 5])
def test_train_forward_backward_reaches_every_parameter(levels, seeded):
    extra = {} if levels == 4 else dict(num_feature_levels=5, return_interm_indices=[0, 1, 2, 3])
    model, criterion, _ = build_model(tiny_args(**extra))
    model.train()
    criterion.train()
    samples, targets = tiny_batch()
    out = model(samples, targets)
    q = MODEL["num_queries"]
    assert out["pred_logits"].shape == (2, q, 7)
    assert out["pred_boxes"].shape == (2, q, 4)
    assert len(out["aux_outputs"]) == 1
    assert out["dn_meta"]["pad_size"] > 0
    losses = criterion(out, targets)
    assert set(criterion.weight_dict) <= set(losses)
    loss = total_loss(criterion, losses)
    assert torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_eval_forward_and_postprocess(seeded):
    model, _, post = build_model(tiny_args())
    model.eval()
    samples, _ = tiny_batch()
    with torch.no_grad():
        out = model(samples)
    assert out["dn_meta"] is None
    assert out["pred_boxes"].min() >= 0 and out["pred_boxes"].max() <= 1
    results = post["bbox"](out, torch.tensor([[480, 640], [300, 400]]))
    assert [r["boxes"].shape for r in results] == [(MODEL["num_select"], 4)] * 2
    # the best (query, class) pair, recomputed by hand: boxes scaled by (w, h, w, h)
    prob = out["pred_logits"][1].sigmoid()
    q, c = divmod(int(prob.argmax()), prob.shape[1])
    cx, cy, w, h = out["pred_boxes"][1, q].tolist()
    expected = torch.tensor([(cx - w / 2) * 400, (cy - h / 2) * 300, (cx + w / 2) * 400, (cy + h / 2) * 300])
    assert results[1]["labels"][0] == c and torch.allclose(results[1]["boxes"][0], expected, atol=1e-3)
    assert torch.allclose(results[1]["scores"][0], prob.max())


def test_dn_scalar_replaces_dn_number_and_coefs_scale_dn_weights():
    # dn_scalar -> dn_number is resolved with the config (tests/util/test_config_schema.py)
    args = tiny_args(dn_label_coef=0.5, dn_bbox_coef=2.0)
    _, criterion, _ = build_model(args)
    w = criterion.weight_dict
    assert w["loss_ce_dn"] == 0.5 * w["loss_ce"]
    assert w["loss_bbox_dn"] == 2.0 * w["loss_bbox"]
    assert w["loss_giou_dn_0"] == 2.0 * w["loss_giou_0"]


def test_missing_backbone_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="backbone_weights"):
        build_model(tiny_args(backbone_weights=str(tmp_path / "nope.pth")))


def test_backbone_weights_load_from_local_file(tmp_path):
    import torchvision
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    model, _, _ = build_model(tiny_args(backbone_weights=str(path)))
    assert torch.equal(model.backbone[0].body.conv1.weight, ref.conv1.weight)


def test_postprocess_nms_removes_same_class_duplicates_only():
    """Per-class NMS: of two near-identical boxes of one class the lower-scored goes; the same box
    with another class and a distant box stay."""
    from models.common.postprocess import PostProcess
    logits = torch.full((1, 3, 3), -9.0)
    logits[0, 0, 1], logits[0, 1, 1], logits[0, 1, 2], logits[0, 2, 1] = 3.0, 2.0, 1.0, 0.0
    boxes = torch.tensor([[[0.30, 0.30, 0.2, 0.2], [0.31, 0.30, 0.2, 0.2], [0.8, 0.8, 0.1, 0.1]]])
    out = {"pred_logits": logits, "pred_boxes": boxes}
    plain = PostProcess(num_select=4)(out, torch.tensor([[100, 100]]))[0]
    nms = PostProcess(num_select=4, nms_iou_threshold=0.5)(out, torch.tensor([[100, 100]]))[0]
    assert plain["labels"].tolist() == [1, 1, 2, 1]
    assert nms["labels"].tolist() == [1, 2, 1]
    assert torch.allclose(nms["scores"], plain["scores"][[0, 2, 3]])
    assert torch.allclose(nms["boxes"][2], torch.tensor([75.0, 75.0, 85.0, 85.0]))
