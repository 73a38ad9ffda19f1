"""tools/inference.py on a tiny checkpoint: detections JSON, drawn PNGs, class names, errors."""
import json

import pytest
import torch
from PIL import Image

from tools import inference


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
    for name, size in [("img0.png", (80, 60)), ("img1.png", (50, 70))]:
        with Image.open(tmp_path / name) as im:
            assert im.size == size  # drawn at the original resolution


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


def test_draw_uses_threshold():
    image = torch.zeros(3, 20, 20, dtype=torch.uint8)
    result = {"scores": torch.tensor([0.9, 0.1]), "labels": torch.tensor([1, 2]),
              "boxes": torch.tensor([[1.0, 1, 10, 10], [5, 5, 15, 15]])}
    drawn = inference.draw(image, result, {1: "a"}, 0.5)
    assert drawn.shape == image.shape and drawn.sum() > 0
    assert drawn[:, 15, 15].sum() == 0  # the low-score box (corner 15,15) was not drawn


@pytest.mark.parametrize("bad,msg", [(["--input", "/nope"], "no such file or folder"),
                                     (["--checkpoint", "/nope.pth"], "--checkpoint /nope.pth"),
                                     (["--threshold", "2"], "must be in"),
                                     (["--names-from", "/nope.json"], "--names-from")])
def test_bad_input_is_one_line_error(tiny_cfg, tiny_checkpoint, image_dir, tmp_path, bad, msg):
    argv = {"--input": str(image_dir), "--checkpoint": tiny_checkpoint, "--threshold": "0.3"}
    argv[bad[0]] = bad[1]
    extra = [] if bad[0] in argv and bad[0] != "--names-from" else bad
    with pytest.raises(SystemExit) as exc:
        run(tiny_cfg, argv["--checkpoint"], argv["--input"], tmp_path, "--threshold", argv["--threshold"], *extra)
    assert msg in str(exc.value) and "\n" not in str(exc.value)


def test_empty_folder(tiny_cfg, tiny_checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="has no images"):
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
    expected = [{"image_id": 0, "category_id": int(l), "score": round(float(s), 5),
                 "bbox": [round(float(v), 3) for v in (b[0], b[1], b[2] - b[0], b[3] - b[1])]}
                for b, s, l in zip(res["boxes"], res["scores"], res["labels"])]
    got = [{k: d[k] for k in ("image_id", "category_id", "score", "bbox")} for d in dets]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g["image_id"] == e["image_id"] and g["category_id"] == e["category_id"]
        assert g["score"] == pytest.approx(e["score"], abs=1.1e-5)
        assert g["bbox"] == pytest.approx(e["bbox"], abs=1.1e-3)  # xywh via box_convert: last-digit ties
