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
