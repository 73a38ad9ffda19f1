"""tools/inference.py on a tiny checkpoint: detections JSON, drawn PNGs, class names, errors."""
import json
import re

import pytest
import torch
from PIL import Image

from tools import inference
from util import visualize as draw

from cli_errors import user_error


def run(cfg, ckpt, inp, out, *extra):
    config, opts = cfg
    return inference.main(["-c", config, "--checkpoint", ckpt, "--input", str(inp), "--output", str(out),
                           *extra, "--options", *opts])


def test_folder_writes_json_and_pngs(tiny_cfg, tiny_checkpoint, image_dir, names_json, tmp_path):
    dets = run(tiny_cfg, tiny_checkpoint, image_dir, tmp_path, "--threshold", "0", "--names-from", names_json)
    with open(tmp_path / "detections.json") as f:
        assert json.load(f) == dets
    assert {d["file_name"] for d in dets} == {"img0.png", "img1.png"}  # notes.txt skipped
    assert len(dets) == 2 * 10  # threshold 0 keeps all num_select
    for d in dets:
        x, y, w, h = d["bbox"]
        assert w >= 0 and h >= 0 and 0 <= d["score"] <= 1
        assert d["category_name"] == f"shape{d['category_id']}"
    for name, (w, h) in [("img0.png", (80, 60)), ("img1.png", (50, 70))]:
        with Image.open(tmp_path / name) as im:  # small images are drawn upscaled, aspect kept
            scale = draw.MIN_SIDE / max(w, h)
            assert im.size == (round(w * scale), round(h * scale))


def test_threshold_filters_and_default_names(tiny_cfg, tiny_checkpoint, image_dir, tmp_path):
    dets = run(tiny_cfg, tiny_checkpoint, image_dir / "img0.png", tmp_path, "--threshold", "1.0")
    assert dets == []
    dets = run(tiny_cfg, tiny_checkpoint, image_dir / "img0.png", tmp_path, "--threshold", "0")
    assert dets[0]["category_name"] == f"class {dets[0]['category_id']}"


def test_names_files(tmp_path):
    txt, js = tmp_path / "n.txt", tmp_path / "n.json"
    txt.write_text("N/A\nperson\nbicycle\n")
    js.write_text(json.dumps({"3": "car"}))
    assert inference.load_names(names_file=str(txt))[1] == "person"
    assert inference.load_names(names_file=str(js)) == {3: "car"}


def test_draw_uses_threshold_and_display_nms():
    image = Image.new("RGB", (640, 640), "black")
    result = {"scores": torch.tensor([0.9, 0.8, 0.1]), "labels": torch.tensor([1, 1, 2]),
              "boxes": torch.tensor([[100.0, 100, 400, 400], [100, 100, 400, 410], [450, 450, 600, 600]])}
    px = lambda im: torch.from_numpy(__import__("numpy").array(im)).permute(2, 0, 1)  # noqa: E731
    (drawn, n_drawn), (raw, n_raw) = draw.draw_prediction(image, result, {1: "a"}, 0.5), \
        draw.draw_prediction(image, result, {1: "a"}, 0.5, nms_iou=None)
    assert (n_drawn, n_raw) == (1, 2)
    drawn, raw = px(drawn), px(raw)
    assert drawn[:, 600, 450].sum() == 0  # the low-score box (edge at x=450) was not drawn
    # the same-class duplicate (bottom edge at y=410) is removed for display, drawn with nms=False
    assert drawn[:, 409, 250].sum() == 0 and raw[:, 409, 250].sum() > 0


def test_default_threshold_is_the_documented_one():
    assert inference.get_parser().parse_args(["--checkpoint", "c", "--input", "i", "--output", "o"]).threshold \
        == inference.DEFAULT_THRESHOLD == 0.2


def _annotation(tmp_path, files):
    path = tmp_path / f"instances{len(list(tmp_path.glob('instances*')))}.json"
    path.write_text(json.dumps({"categories": [{"id": i, "name": f"shape{i}"} for i in range(7)],
                                "images": [{"id": 1000 + k, "file_name": f} for k, f in enumerate(files)]}))
    return str(path)


def test_coco_image_ids_from_the_annotation_file(tiny_cfg, tiny_checkpoint, image_dir, tmp_path):
    ann = _annotation(tmp_path, ["img1.png", "img0.png"])  # listed in another order than sorted
    dets = run(tiny_cfg, tiny_checkpoint, image_dir, tmp_path / "out", "--threshold", "0", "--names-from", ann)
    assert {(d["file_name"], d["image_id"]) for d in dets} == {("img0.png", 1001), ("img1.png", 1000)}
    # an annotation file that lists none of the images: names only, ids are the input order
    other = _annotation(tmp_path, ["elsewhere.jpg"])
    assert inference.coco_image_ids(other, [str(image_dir / "img0.png")]) is None
    with pytest.raises(inference.InputError, match="lists 1 of the 2 input images but not img1.png"):
        inference.coco_image_ids(_annotation(tmp_path, ["img0.png"]),
                                 [str(image_dir / "img0.png"), str(image_dir / "img1.png")])


def test_config_comes_from_the_checkpoint(tiny_cfg, stored_config_checkpoint, image_dir, tmp_path, capsys):
    """A checkpoint with its args needs no -c; an explicit -c that does not fit is one short line."""
    dets = inference.main(["--checkpoint", stored_config_checkpoint, "--input", str(image_dir / "img0.png"),
                           "--output", str(tmp_path / "a"), "--threshold", "0"])
    assert len(dets) == 10 and "model config: the one stored in" in capsys.readouterr().out
    with user_error(capsys) as err:
        inference.main(["-c", tiny_cfg[0], "--checkpoint", stored_config_checkpoint, "--input",
                        str(image_dir / "img0.png"), "--output", str(tmp_path / "b")])
    msg = err["line"]
    assert len(msg.replace(stored_config_checkpoint, "").replace(str(tmp_path), "")) < 540
    assert f"it was trained with {tiny_cfg[0]}, this run's model comes from {tiny_cfg[0]}" in msg
    assert "differing keys: hidden_dim=32 (now 128), dec_layers=1 (now 3), enc_layers=1 (now 3) (+3 more)" in msg
    assert ("; leave out -c (the model is then built from the config stored in the checkpoint), or add --options "
            "hidden_dim=32 dec_layers=1 enc_layers=1 nheads=4 dim_feedforward=64 num_queries=10 (full list in") in msg
    assert "tensors differ" in msg
    assert "shape mismatches" in (tmp_path / "b" / "load_error.txt").read_text()


def test_checkpoint_without_config_needs_c(tiny_checkpoint, image_dir, tmp_path, capsys):
    with user_error(capsys, "stores no config .*pass -c"):
        inference.main(["--checkpoint", tiny_checkpoint, "--input", str(image_dir), "--output", str(tmp_path)])


@pytest.mark.parametrize("bad,msg", [(["--input", "/nope"], "no such file or folder"),
                                     (["--checkpoint", "/nope.pth"], "--checkpoint /nope.pth"),
                                     (["--threshold", "2"], "must be in"),
                                     (["--names-from", "/nope.json"], "--names-from")])
def test_bad_input_is_one_line_error(tiny_cfg, tiny_checkpoint, image_dir, tmp_path, bad, msg, capsys):
    argv = {"--input": str(image_dir), "--checkpoint": tiny_checkpoint, "--threshold": "0.3"}
    argv[bad[0]] = bad[1]
    extra = [] if bad[0] in argv and bad[0] != "--names-from" else bad
    with user_error(capsys, re.escape(msg)):
        run(tiny_cfg, argv["--checkpoint"], argv["--input"], tmp_path, "--threshold", argv["--threshold"], *extra)


def test_empty_folder(tiny_cfg, tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with user_error(capsys, "has no images"):
        run(tiny_cfg, tiny_checkpoint, tmp_path / "empty", tmp_path / "o")


def test_detections_are_a_direct_forward_rounded_as_results_json(tiny_cfg, tiny_checkpoint, image_dir, tmp_path):
    # the tool runs engine.predict over its image loader; the numbers must be those of one
    # plain forward of the file at its (h, w), rounded as main.py's results.json (3 / 5 decimals)
    from datasets.coco import load_rgb_image, transforms_from_args
    from tools.common import build_eval_model, tool_args

    dets = run(tiny_cfg, tiny_checkpoint, image_dir / "img1.png", tmp_path, "--threshold", "0")
    args = tool_args(tiny_cfg[0], tiny_cfg[1])
    model, post = build_eval_model(args, tiny_checkpoint)
    img = load_rgb_image(str(image_dir / "img1.png"))  # 50 x 70: not square, so h/w order matters
    image, _ = transforms_from_args("val", args)(img, {})
    with torch.no_grad():
        res = post["bbox"](model(image[None]), torch.tensor([[img.height, img.width]]))[0]
    expected = [{"image_id": 0, "category_id": int(label), "score": round(float(s), 5),
                 "bbox": [round(float(v), 3) for v in (b[0], b[1], b[2] - b[0], b[3] - b[1])]}
                for b, s, label in zip(res["boxes"], res["scores"], res["labels"])]
    got = [{k: d[k] for k in ("image_id", "category_id", "score", "bbox")} for d in dets]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g["image_id"] == e["image_id"] and g["category_id"] == e["category_id"]
        assert g["score"] == pytest.approx(e["score"], abs=1.1e-5)
        assert g["bbox"] == pytest.approx(e["bbox"], abs=1.1e-3)  # xywh via box_convert: last-digit ties


def _annotation_with_boxes(tmp_path, image_dir):
    """A COCO annotation file listing the two test images with one box each (class 3, then class 5)."""
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({
        "images": [{"id": 10, "file_name": "img0.png", "width": 80, "height": 60},
                   {"id": 11, "file_name": "img1.png", "width": 50, "height": 70}],
        "annotations": [{"id": 1, "image_id": 10, "category_id": 3, "bbox": [10, 10, 50, 30]},
                        {"id": 2, "image_id": 11, "category_id": 5, "bbox": [5, 20, 30, 30]}],
        "categories": [{"id": 3, "name": "three"}, {"id": 5, "name": "five"}]}))
    return str(path)


def test_gt_overlays_the_ground_truth_and_gives_names_and_ids(tiny_cfg, tiny_checkpoint, image_dir, tmp_path,
                                                             capsys):
    gt = _annotation_with_boxes(tmp_path, image_dir)
    dets = run(tiny_cfg, tiny_checkpoint, image_dir, tmp_path / "a", "--threshold", "0.99", "--gt", gt)
    assert {d["image_id"] for d in dets} <= {10, 11}
    out = capsys.readouterr().out
    assert f"over the dashed ground truth of {gt}" in out and f"class names: {gt}" in out
    picture = torch.from_numpy(__import__("numpy").array(Image.open(tmp_path / "a" / "img0.png"))).permute(2, 0, 1)
    scale = draw.MIN_SIDE / 80  # upscaled for drawing
    edge = picture[:, round(25 * scale), round(10 * scale) - 3:round(10 * scale) + 3]  # the box's left edge
    assert any(col.tolist() == [int(draw.class_color(3)[i:i + 2], 16) for i in (1, 3, 5)] for col in edge.T)
    (tmp_path / "gt_one.json").write_text(json.dumps({**json.loads(open(gt).read()), "images": [
        {"id": 10, "file_name": "img0.png", "width": 80, "height": 60}]}))
    with user_error(capsys, "--gt .*gt_one.json does not list img1.png"):
        run(tiny_cfg, tiny_checkpoint, image_dir, tmp_path / "b", "--gt", str(tmp_path / "gt_one.json"))


def test_a_picture_without_boxes_says_so():
    image = Image.new("RGB", (640, 640), "black")
    result = {"scores": torch.tensor([0.13, 0.05]), "labels": torch.tensor([1, 2]),
              "boxes": torch.tensor([[100.0, 100, 400, 400], [450, 450, 600, 600]])}
    picture, count = draw.draw_prediction(image, result, {}, 0.2)
    px = torch.from_numpy(__import__("numpy").array(picture)).permute(2, 0, 1)
    assert count == 0 and (px[:, 2:6, 2:6] == 255).all()  # the note's white label in the top-left corner
    notes = []
    real = draw.draw_detections
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(draw, "draw_detections", lambda *a, **kw: notes.append(a[6]) or real(*a, **kw))
        draw.draw_prediction(image, result, {}, 0.2)
        draw.draw_prediction(image, {k: v[:0] for k, v in result.items()}, {}, 0.2)
        draw.draw_prediction(image, result, {}, 0.1)
    assert notes == ["no box above 0.2 (highest score 0.13)", "no box above 0.2 (no detections)", None]
