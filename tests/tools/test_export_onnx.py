"""tools/export_onnx.py: a tiny model exports and onnxruntime matches PyTorch."""
import os

import pytest

pytest.importorskip("onnxruntime")

from tools import export_onnx  # noqa: E402


def test_export_and_check_on_image(tiny_cfg, tiny_checkpoint, image_dir, tmp_path):
    config, opts = tiny_cfg
    out = tmp_path / "m.onnx"
    diffs = export_onnx.main(["-c", config, "--checkpoint", tiny_checkpoint, "--output", str(out),
                              "--image-size", "64", "96", "--check", str(image_dir / "img0.png"), "--options", *opts])
    assert os.path.getsize(out) > 0
    assert diffs["boxes"] < 1e-3 and diffs["post_scores"] < 1e-3 and diffs["post_boxes_px"] < 0.5
    import onnx
    graph = onnx.load(str(out)).graph
    assert [i.name for i in graph.input] == ["images"]
    assert [o.name for o in graph.output] == ["pred_logits", "pred_boxes"]


def test_missing_check_image(tiny_cfg, tmp_path):
    config, opts = tiny_cfg
    with pytest.raises(SystemExit, match="no such file"):
        export_onnx.main(["-c", config, "--output", str(tmp_path / "m.onnx"), "--image-size", "64", "96",
                          "--check", str(tmp_path / "none.png"), "--options", *opts])


class _FakeSession:
    """Stands in for onnxruntime.InferenceSession: returns given outputs."""
    outputs = None

    def __init__(self, path, providers=None):
        pass

    def run(self, names, feeds):
        return [a.numpy() for a in _FakeSession.outputs]


@pytest.fixture
def tiny_model_and_outputs(tiny_cfg, tiny_checkpoint):
    import torch
    from tools.common import build_eval_model, tool_args
    config, opts = tiny_cfg
    model, post = build_eval_model(tool_args(config, opts), tiny_checkpoint)
    images = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, boxes = export_onnx.ExportWrapper(model)(images)
    return model, post, images, logits, boxes


def test_compare_ignores_query_order_but_not_detections(tiny_model_and_outputs, monkeypatch):
    """Near-tied two-stage proposals may come out of ONNX TopK in another order: the same queries
    permuted must pass; moving the box of the top detection must not."""
    import onnxruntime
    import torch
    model, post, images, logits, boxes = tiny_model_and_outputs
    monkeypatch.setattr(onnxruntime, "InferenceSession", _FakeSession)
    perm = torch.randperm(logits.shape[1], generator=torch.Generator().manual_seed(0))
    _FakeSession.outputs = (logits[:, perm], boxes[:, perm])
    diffs = export_onnx.compare(model, post, "unused.onnx", images)
    assert diffs["queries_off"] == 0 and max(v for k, v in diffs.items() if k != "queries_off") < 1e-6
    top_query = int(logits[0].max(-1).values.argmax())
    moved = boxes[:, perm].clone()
    moved[0, int((perm == top_query).nonzero()), 0] += 0.05
    _FakeSession.outputs = (logits[:, perm], moved)
    with pytest.raises(SystemExit, match="detections differ from PyTorch"):
        export_onnx.compare(model, post, "unused.onnx", images)
