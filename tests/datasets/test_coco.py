import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.coco import BadImageError, CocoDetection, DataError, build, load_rgb_image

from data_helpers import data_args


def ann(image_id, bbox, cat=1, **extra):
    return dict(image_id=image_id, bbox=bbox, category_id=cat, **extra)


def rgb(w=40, h=30, colour=(10, 20, 30)):
    return Image.new("RGB", (w, h), colour)


# ---------------------------------------------------------------- items


def test_item_format_on_synthetic(synthetic_root):
    ds = build("val", data_args(coco_path=synthetic_root))
    assert len(ds) == 6
    for i in range(len(ds)):
        image, t = ds[i]
        assert image.dtype == torch.float32 and image.shape[0] == 3
        assert set(t) == {"boxes", "labels", "image_id", "orig_size", "size", "area", "iscrowd"}
        k = len(t["labels"])
        assert t["boxes"].shape == (k, 4) and t["boxes"].dtype == torch.float32
        assert t["labels"].dtype == torch.int64 and t["iscrowd"].shape == (k,) and t["area"].shape == (k,)
        assert ((t["boxes"] > 0) & (t["boxes"] <= 1)).all()
        assert t["image_id"].dtype == torch.int64 and t["image_id"].ndim == 0
        assert t["orig_size"].tolist() == [128, 128] and t["size"].tolist() == list(image.shape[-2:])
        assert set(t["labels"].tolist()) <= set(range(1, 7))  # raw category ids


def test_val_boxes_match_ground_truth(synthetic_root):
    ds = build("val", data_args(coco_path=synthetic_root, data_aug_scales=[128]))  # no resize
    for i in range(len(ds)):
        _, t = ds[i]
        gt = [a for a in ds.coco.imgToAnns[int(t["image_id"])]]
        xywh = torch.tensor([a["bbox"] for a in gt]).reshape(-1, 4)
        cxcywh = torch.cat([xywh[:, :2] + xywh[:, 2:] / 2, xywh[:, 2:]], 1) / 128
        assert torch.allclose(t["boxes"], cxcywh, atol=1e-5)
        assert t["labels"].tolist() == [a["category_id"] for a in gt]


def test_train_items_stay_consistent(synthetic_root):
    ds = build("train", data_args(coco_path=synthetic_root))
    torch.manual_seed(0)
    for i in range(len(ds)):
        image, t = ds[i]
        assert t["size"].tolist() == list(image.shape[-2:])
        assert len(t["boxes"]) == len(t["labels"]) == len(t["area"])


def test_no_transforms_gives_pixel_xyxy(make_coco):
    root = make_coco([("a.png", rgb())], [ann(1, [5, 6, 10, 8])])
    ds = CocoDetection(os.path.join(root, "val2017"), os.path.join(root, "annotations/instances_val2017.json"))
    img, t = ds[0]
    assert img.size == (40, 30)
    assert t["boxes"].tolist() == [[5, 6, 15, 14]]


# ---------------------------------------------------------------- annotations


def test_degenerate_boxes_dropped_and_counted(make_coco):
    anns = [ann(1, [5, 5, 10, 10]), ann(1, [5, 5, 0, 10]), ann(1, [50, 50, 10, 10]),  # zero width, outside
            ann(1, [-5, -5, 10, 100])]  # partly outside: clipped
    root = make_coco([("a.png", rgb())], anns)
    ds = build("val", data_args(coco_path=root, data_aug_scales=[30]))
    assert ds.num_degenerate_boxes == 2
    _, t = ds[0]
    assert len(t["boxes"]) == 2
    # the clipped box covers x 0..5, y 0..30 of the 40 x 30 image
    assert torch.allclose(t["boxes"][1], torch.tensor([2.5 / 40, 0.5, 5 / 40, 1.0]))


def test_crowd_only_image_has_empty_target_but_stays_in_gt(make_coco):
    root = make_coco([("a.png", rgb())], [ann(1, [5, 5, 10, 10], iscrowd=1)])
    ds = build("val", data_args(coco_path=root))
    _, t = ds[0]
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)
    assert len(ds.coco.imgToAnns[1]) == 1 and ds.coco.imgToAnns[1][0]["iscrowd"] == 1


def test_image_without_annotations_is_kept(make_coco):
    root = make_coco([("a.png", rgb()), ("b.png", rgb())], [ann(1, [5, 5, 10, 10])])
    ds = build("val", data_args(coco_path=root))
    assert len(ds) == 2 and ds[1][1]["boxes"].shape == (0, 4)


def test_optional_annotation_fields_filled(make_coco):
    root = make_coco([("a.png", rgb())], [ann(1, [5, 5, 10, 4])])
    ds = build("val", data_args(coco_path=root))
    a = ds.coco.dataset["annotations"][0]
    assert a["id"] == 1 and a["iscrowd"] == 0 and a["area"] == 40.0


# ---------------------------------------------------------------- layout / JSON errors


def test_missing_coco_path(tmp_path):
    with pytest.raises(DataError, match="--coco_path"):
        build("val", data_args(coco_path=str(tmp_path / "nope")))
    with pytest.raises(DataError, match="not a directory"):
        build("val", data_args(coco_path=None))


def test_missing_folder_and_annotation_file(tmp_path):
    (tmp_path / "annotations").mkdir()
    with pytest.raises(DataError, match=r"val2017 is missing"):
        build("val", data_args(coco_path=str(tmp_path)))
    (tmp_path / "val2017").mkdir()
    with pytest.raises(DataError, match=r"instances_val2017.json is missing"):
        build("val", data_args(coco_path=str(tmp_path)))


def test_malformed_json_names_line_and_column(make_coco):
    root = make_coco([("a.png", rgb())], [], raw_json='{"images": [\n  {"id": 1,, }\n]}')
    with pytest.raises(DataError, match=r"instances_val2017.json is not valid JSON: .* line 2 column 12"):
        build("val", data_args(coco_path=root))


@pytest.mark.parametrize("raw,match", [
    ({"images": [], "categories": []}, "missing required list 'annotations'"),
    ({"images": [{"id": 1, "file_name": "a.png", "width": 40}], "annotations": [], "categories": []},
     r"images\[0\] is missing required field 'height'"),
    ({"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}] * 2, "annotations": [],
      "categories": []}, r"images\[1\] repeats image id 1"),
    ({"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
      "annotations": [{"image_id": 1, "category_id": 1}], "categories": [{"id": 1}]},
     r"annotations\[0\] is missing required field 'bbox'"),
    ({"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
      "annotations": [{"image_id": 1, "bbox": [1, 2, 3]}], "categories": [{"id": 1}]},
     "missing required field 'category_id'"),
    ({"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
      "annotations": [{"bbox": [1, 2, 3, 4], "category_id": 1}], "categories": [{"id": 1}]},
     "missing required field 'image_id'"),
    ({"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
      "annotations": [{"image_id": 1, "bbox": [1, 2, 3], "category_id": 1}], "categories": [{"id": 1}]},
     r"has bbox \[1, 2, 3\]"),
    ({"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
      "annotations": [{"image_id": 9, "bbox": [1, 2, 3, 4], "category_id": 1}], "categories": [{"id": 1}]},
     "image_id 9 not in 'images'"),
    ({"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
      "annotations": [{"image_id": 1, "bbox": [1, 2, 3, 4], "category_id": 5}], "categories": [{"id": 1}]},
     "category_id 5 not listed"),
])
def test_missing_or_bad_fields(make_coco, raw, match):
    root = make_coco([("a.png", rgb())], [], raw_json=json.dumps(raw))
    with pytest.raises(DataError, match=match) as e:
        build("val", data_args(coco_path=root))
    assert "instances_val2017.json" in str(e.value) and "\n" not in str(e.value)


def test_category_id_beyond_num_classes(make_coco):
    root = make_coco([("a.png", rgb())], [ann(1, [1, 1, 5, 5], cat=9)], categories=[{"id": 9, "name": "x"}])
    with pytest.raises(DataError,
                       match=r"category id 9 >= num_classes=7 .*--options num_classes=10$"):
        build("val", data_args(coco_path=root))
    # dn_labelbook_size < num_classes - 1 is refused by the config check (tests/util/test_config_schema.py)
    assert len(build("val", data_args(coco_path=root, num_classes=10, dn_labelbook_size=9))) == 1


def test_ids_are_checked_without_the_label_book(make_coco):
    """build() reads no dn_labelbook_size (a detector without denoising queries, Deformable DETR, has none; DINO's
    config check keeps it >= num_classes - 1): the dataset builds."""
    root = make_coco([("a.png", rgb())], [ann(1, [1, 1, 5, 5], cat=9)], categories=[{"id": 9, "name": "x"}])
    args = data_args(coco_path=root, num_classes=10, dn_labelbook_size=10)
    del args.dn_labelbook_size
    assert len(build("val", args)) == 1


# ---------------------------------------------------------------- image files


def jpeg_bytes(w=40, h=30):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (1, 2, 3)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("content,match", [
    (None, "does not exist"),
    (jpeg_bytes()[:200], "cannot read image file"),  # truncated
    (b"this is not an image", "cannot read image file"),
])
def test_bad_image_file_raises_naming_the_file(make_coco, content, match):
    root = make_coco([("bad.jpg", content)], [])
    ds = build("val", data_args(coco_path=root))
    with pytest.raises(BadImageError, match=match) as e:
        ds[0]
    assert os.path.join("val2017", "bad.jpg") in str(e.value) and "skip_bad_images" in str(e.value)
    assert "\n" not in str(e.value)


def test_size_mismatch_with_json_is_bad_image(make_coco):
    root = make_coco([("a.png", rgb())], [])
    path = os.path.join(root, "val2017", "a.png")
    rgb(30, 40).save(path)  # JSON says 40 x 30
    with pytest.raises(BadImageError, match="is 30x40 but the annotation JSON says 40x30"):
        build("val", data_args(coco_path=root))[0]


def test_skip_bad_images_moves_on_and_counts(make_coco):
    root = make_coco([("ok1.png", rgb()), ("bad.jpg", b"junk"), ("missing.jpg", None), ("ok2.png", rgb())],
                     [ann(4, [1, 1, 5, 5], cat=2)])
    ds = build("val", data_args(coco_path=root, skip_bad_images=True))
    with pytest.warns(UserWarning) as record:
        _, t = ds[1]
    messages = " ".join(str(w.message) for w in record)
    assert "bad.jpg" in messages and "missing.jpg" in messages
    assert int(t["image_id"]) == 4 and t["labels"].tolist() == [2]
    assert ds.num_skipped_images == 2
    ds[1]  # the same bad files again: counted once
    assert ds.num_skipped_images == 2
    assert int(ds[0][1]["image_id"]) == 1


def test_all_images_bad_with_skip(make_coco):
    root = make_coco([("bad.jpg", b"junk")], [])
    ds = build("val", data_args(coco_path=root, skip_bad_images=True))
    with pytest.warns(UserWarning), pytest.raises(DataError, match="no readable image"):
        ds[0]


@pytest.mark.parametrize("make_img,expected", [
    (lambda: Image.new("L", (4, 3), 77), (77, 77, 77)),
    (lambda: Image.new("RGBA", (4, 3), (10, 20, 30, 0)), (10, 20, 30)),
    (lambda: Image.fromarray(np.full((3, 4), 65535, np.uint16)), (255, 255, 255)),
    (lambda: Image.fromarray(np.full((3, 4), 32896, np.uint16)), (128, 128, 128)),
    (lambda: Image.new("CMYK", (4, 3), (0, 0, 0, 0)), (255, 255, 255)),
    (lambda: Image.new("P", (4, 3), 0), (0, 0, 0)),
    (lambda: Image.new("1", (4, 3), 1), (255, 255, 255)),
])
def test_image_modes_load_as_rgb(tmp_path, make_img, expected):
    img = make_img()
    path = str(tmp_path / ("x.tiff" if img.mode == "CMYK" else "x.png"))
    img.save(path)
    out = load_rgb_image(path, (3, 4))
    assert out.mode == "RGB" and out.size == (4, 3)
    assert out.getpixel((1, 1)) == expected


def test_16bit_is_scaled_not_clipped(tmp_path):
    ramp = np.array([[0, 256, 4096, 65535]], np.uint16)
    path = str(tmp_path / "g16.png")
    Image.fromarray(ramp).save(path)
    out = np.asarray(load_rgb_image(path))[0, :, 0]
    assert out.tolist() == [0, 1, 16, 255]


def test_exif_orientation_is_not_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (9, 9, 9))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW" tag: the stored array is still 40 x 20
    path = str(tmp_path / "rot.jpg")
    img.save(path, exif=exif.tobytes())
    assert load_rgb_image(path, (20, 40)).size == (40, 20)
