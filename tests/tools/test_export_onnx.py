"""tools/export_onnx.py: a tiny model exports and onnxruntime matches PyTorch."""
import os
import warnings

import pytest
import torch

pytest.importorskip("onnxruntime")

from tools import export_onnx  # noqa: E402

from cli_errors import user_error


def test_export_and_check_on_image(tiny_cfg, tiny_checkpoint, image_dir, tmp_path, capsys):
    config, opts = tiny_cfg
    out = tmp_path / "m.onnx"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        diffs = export_onnx.main(["-c", config, "--checkpoint", tiny_checkpoint, "--output", str(out), "--image-size",
                                  "64", "96", "--check", str(image_dir / "img0.png"), "--options", *opts])
    assert os.path.getsize(out) > 0
    assert diffs["boxes"] < 1e-3 and diffs["post_scores"] < 1e-3 and diffs["post_boxes_px"] < 0.5
    # at 64x96 the stride-64 level is one row high: its reference points once came out NaN in the graph
    # (linspace's export), which moved every logit by up to 0.1 while the boxes still agreed
    assert diffs["logits"] < 1e-4 and diffs["queries_off"] == 0
    # the exporter's expected tracer / legacy-exporter warnings are filtered, nothing else came up
    assert [str(w.message)[:80] for w in seen if issubclass(w.category, (torch.jit.TracerWarning, DeprecationWarning))
            ] == []
    lines = capsys.readouterr().out.splitlines()
    # img0 is 80x60: the val transform makes it 64x85, so the 64x96 graph gets it fitted and padded
    assert any(line.startswith("warning: the config evaluates") and "at 64x85 (HxW), the export size is 64x96" in line
               and "not stretched" in line for line in lines)
    assert lines[-2].startswith(f"PASS: onnxruntime vs PyTorch on {image_dir / 'img0.png'}: the top-10 detections'")
    assert lines[-1].startswith("PASS: onnxruntime vs PyTorch on the same resized to 96x96: the top-10 detections'")
    import onnx
    graph = onnx.load(str(out)).graph
    assert [i.name for i in graph.input] == ["images"]
    assert [o.name for o in graph.output] == ["pred_logits", "pred_boxes"]


def test_default_size_is_the_check_images_evaluation_size(stored_config_checkpoint, image_dir, tmp_path, capsys):
    """No -c (the checkpoint stores its config) and no --image-size: exported at img1's val-transform size."""
    export_onnx.main(["--checkpoint", stored_config_checkpoint, "--output", str(tmp_path / "m.onnx"),
                      "--check", str(image_dir / "img1.png"), "--no-check"])
    out = capsys.readouterr().out
    assert "model config: the one stored in" in out and "traced at 89x64" in out  # 50x70 -> longer side 89 <= 96
    assert "warning" not in out


def test_size_the_config_would_not_evaluate_at_is_a_warning(tiny_cfg, tmp_path, capsys):
    config, opts = tiny_cfg
    export_onnx.main(["-c", config, "--output", str(tmp_path / "m.onnx"), "--image-size", "64", "128", "--no-check",
                      "--options", *opts])
    assert ("warning: export size 64x128 (HxW) differs from the config's evaluation size: its val transform resizes "
            "a 64x128 image to 48x96 (data_aug_scales max 64, data_aug_max_size 96)") in capsys.readouterr().out


def test_fit_and_pad_keeps_the_aspect():
    image = torch.ones(3, 40, 40)  # a square image into a wide graph: scaled to 64x64, padded on the right
    out = export_onnx.fit_and_pad(image, 64, 96)
    assert out.shape == (1, 3, 64, 96)
    assert torch.allclose(out[0, :, :, :64], torch.ones(3, 64, 64)) and (out[0, :, :, 64:] == 0).all()


def test_only_expected_warnings_are_filtered():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with export_onnx.expected_warnings_filtered():
            warnings.warn("Converting a tensor to a Python boolean might cause the trace to be incorrect",
                          torch.jit.TracerWarning)
            warnings.warn("You are using the legacy TorchScript-based ONNX export.", DeprecationWarning)
            warnings.warn("something else", torch.jit.TracerWarning)
            warnings.warn("You are using the legacy TorchScript-based ONNX export.", UserWarning)
    assert [(w.category, str(w.message)[:14]) for w in seen] == [(torch.jit.TracerWarning, "something else"),
                                                                 (UserWarning, "You are using ")]
    assert all(why for _, _, why in export_onnx.EXPECTED_WARNINGS)


def test_missing_check_image(tiny_cfg, tmp_path, capsys):
    config, opts = tiny_cfg
    with user_error(capsys, "no such file"):
        export_onnx.main(["-c", config, "--output", str(tmp_path / "m.onnx"), "--image-size", "64", "96",
                          "--check", str(tmp_path / "none.png"), "--options", *opts])


def test_too_small_export_size_is_one_line(tiny_cfg, tmp_path, capsys):
    config, opts = tiny_cfg
    with user_error(capsys, "^export_onnx.py: error: export at 16x16 failed"):
        export_onnx.main(["-c", config, "--output", str(tmp_path / "m.onnx"), "--image-size", "16", "16",
                          "--no-check", "--options", *opts])


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
    permuted must PASS; moving the box of the top detection must FAIL, in one line each."""
    import onnxruntime
    model, post, images, logits, boxes = tiny_model_and_outputs
    monkeypatch.setattr(onnxruntime, "InferenceSession", _FakeSession)
    perm = torch.randperm(logits.shape[1], generator=torch.Generator().manual_seed(0))
    _FakeSession.outputs = (logits[:, perm], boxes[:, perm])
    diffs = export_onnx.compare(model, post, "unused.onnx", images)
    assert diffs["queries_off"] == 0 and diffs["queries"] == 10 and diffs["top_k"] == 10
    assert max(diffs[k] for k in ("logits", "boxes", "post_scores", "post_boxes_px")) < 1e-6
    passed, line = export_onnx.verdict(diffs, 1e-3, images, "x.png")
    assert passed and line.startswith("PASS: onnxruntime vs PyTorch on x.png: the top-10 detections' scores")
    assert "0 of 10 queries beyond 0.001" in line and "\n" not in line
    top_query = int(logits[0].max(-1).values.argmax())
    moved = boxes[:, perm].clone()
    moved[0, int((perm == top_query).nonzero()), 0] += 0.05
    _FakeSession.outputs = (logits[:, perm], moved)
    passed, line = export_onnx.verdict(export_onnx.compare(model, post, "unused.onnx", images), 1e-3, images, "x.png")
    assert not passed and line.startswith("FAIL: ") and "allowed 0.10 px" in line


def _documented_example() -> dict:
    """The onnxruntime example of docs/tools.md, executed as a module (not as __main__)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "docs", "tools.md")) as f:
        text = f.read()
    block = text.split("<!-- onnxruntime example")[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace = {"__name__": "docs_example"}
    exec(compile(block, "docs/tools.md (onnxruntime example)", "exec"), namespace)
    return namespace


def test_postprocessed_graph_and_the_documented_example_at_two_sizes(tiny_cfg, tiny_checkpoint, image_dir,
                                                                     tmp_path, capsys):
    """--postprocess: scores, labels and boxes from the graph, whose height and width are dynamic; the docs'
    example runs it at two sizes and finds what PyTorch finds on the same input."""
    import onnx
    import onnxruntime as ort

    from tools.common import build_eval_model, tool_args
    config, opts = tiny_cfg
    out = tmp_path / "post.onnx"
    export_onnx.main(["-c", config, "--checkpoint", tiny_checkpoint, "--output", str(out), "--postprocess",
                      "--image-size", "64", "96", "--options", *opts])
    assert [line[:5] for line in capsys.readouterr().out.splitlines()[-2:]] == ["PASS:", "PASS:"]
    graph = onnx.load(str(out)).graph
    assert [o.name for o in graph.output] == ["scores", "labels", "boxes"]
    assert [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 3, "height",
                                                                                                "width"]
    example = _documented_example()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    model, post = build_eval_model(tool_args(config, opts), tiny_checkpoint)
    path = str(image_dir / "img0.png")  # 80x60
    sizes = []
    for short, longest in [(64, 96), (96, 128)]:
        found = example["detect"](session, path, short, longest, threshold=0.0)
        images, scale = example["preprocess"](path, short, longest)
        sizes.append(images.shape[-2:])
        with torch.no_grad():
            scores, labels, boxes = export_onnx.ExportWrapper(model, post["bbox"])(torch.from_numpy(images))
        assert len(found) == len(scores) == 10
        assert max(abs(a - b) for a, b in zip(sorted(s for _, s, _ in found), sorted(scores.tolist()))) < 1e-3
        best = max(found, key=lambda d: d[1])
        top = int(scores.argmax())
        assert best[0] == int(labels[top]) and max(abs(a - b) for a, b in zip(best[2], (boxes[top] / scale).tolist())
                                                   ) < 0.5
    assert sizes == [(64, 85), (96, 128)]  # two different input sizes through one graph
