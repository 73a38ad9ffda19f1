import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from datasets import synthetic
from datasets.synthetic import CATEGORIES, MARKER, ensure_synthetic_dataset, generate, main

from data_helpers import file_digest


def tree_hash(root):
    h = hashlib.sha256()
    for name, data in sorted(file_digest(root).items()):
        h.update(name.encode() + b"\0" + data)
    return h.hexdigest()


def test_same_seed_is_byte_identical_and_seed_matters(tmp_path):
    a, b, c = (str(tmp_path / n) for n in "abc")
    generate(a, 6, 3, 96, seed=1)
    generate(b, 6, 3, 96, seed=1)
    generate(c, 6, 3, 96, seed=2)
    assert tree_hash(a) == tree_hash(b)
    assert tree_hash(a) != tree_hash(c)


def test_layout_and_annotations(synthetic_root):
    for split, n in (("train", 12), ("val", 6)):
        with open(os.path.join(synthetic_root, "annotations", f"instances_{split}2017.json")) as f:
            data = json.load(f)
        assert [c["id"] for c in data["categories"]] == list(range(1, len(CATEGORIES) + 1))
        assert len(data["images"]) == n
        for img in data["images"]:
            path = os.path.join(synthetic_root, f"{split}2017", img["file_name"])
            with Image.open(path) as im:
                assert im.format == "JPEG" and im.size == (img["width"], img["height"]) == (128, 128)
        for a in data["annotations"]:
            x, y, w, h = a["bbox"]
            assert x >= 0 and y >= 0 and x + w <= 128 and y + h <= 128 and w > 0 and h > 0
            assert 0 < a["area"] <= w * h and a["iscrowd"] == 0
    train_json = os.path.join(synthetic_root, "annotations/instances_train2017.json")
    train_ids = {i["id"] for i in json.load(open(train_json))["images"]}
    val_ids = {i["id"] for i in data["images"]}
    assert not train_ids & val_ids


def test_statistics_cover_sizes_classes_and_empty_images():
    rng = np.random.default_rng(0)
    areas, cats, empty = [], set(), 0
    for _ in range(60):
        _, objects = synthetic.make_image(rng, 256)
        empty += not objects
        areas += [o["area"] for o in objects]
        cats |= {o["category_id"] for o in objects}
    areas = np.array(areas)
    assert (areas < 32 ** 2).any() and ((areas > 32 ** 2) & (areas < 96 ** 2)).any() and (areas > 96 ** 2).any()
    assert cats == set(range(1, len(CATEGORIES) + 1))
    assert 1 <= empty <= 15


@pytest.mark.parametrize("kind,low,high", [("rectangle", 0.99, 1.0), ("ellipse", 0.7, 0.85), ("triangle", 0.4, 0.6),
                                           ("cross", 0.45, 0.65), ("ring", 0.3, 0.7), ("diamond", 0.4, 0.6)])
def test_shapes_fill_their_box_distinctly(kind, low, high):
    mask = synthetic._shape_mask(kind, 40, 30, flip=False)
    assert mask.getbbox() == (0, 0, 40, 30)  # the annotation box is tight
    fill = np.count_nonzero(np.asarray(mask)) / (40 * 30)
    assert low <= fill <= high


def test_object_colour_differs_from_background():
    img, objects = synthetic.make_image(np.random.default_rng(2), 128)
    arr = np.asarray(img, dtype=np.float32)
    assert len([o for o in objects if o["category_id"] in (1, 2, 4, 6)]) >= 2
    for o in objects:
        x, y, w, h = o["bbox"]
        centre = arr[y + h // 2, x + w // 2]
        if o["category_id"] in (1, 2, 4, 6):  # shapes that cover their box centre
            corners = arr[[0, 0, -1, -1], [0, -1, 0, -1]].mean(0)
            assert np.abs(centre - corners).sum() > 30


def test_ensure_reuses_regenerates_and_is_atomic(tmp_path, monkeypatch):
    root = str(tmp_path / "cache" / "syn")
    assert ensure_synthetic_dataset(root, 4, 2, 64, 0) == root
    marker = os.path.join(root, MARKER)
    first = os.path.getmtime(marker)
    ensure_synthetic_dataset(root, 4, 2, 64, 0)
    assert os.path.getmtime(marker) == first  # same parameters: not regenerated
    ensure_synthetic_dataset(root, 5, 2, 64, 0)
    assert json.load(open(marker))["num_train"] == 5
    assert len(os.listdir(os.path.join(root, "train2017"))) == 5
    assert sorted(os.listdir(tmp_path / "cache")) == ["syn", "syn.lock"]  # no temp folders left

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "write_split", boom)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic_dataset(root, 7, 2, 64, 0)
    assert json.load(open(marker))["num_train"] == 5  # old dataset intact
    assert sorted(os.listdir(tmp_path / "cache")) == ["syn", "syn.lock"]
    fresh = str(tmp_path / "cache" / "fresh")
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic_dataset(fresh, 4, 2, 64, 0)
    assert not os.path.exists(fresh)


def test_ensure_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a synthetic dataset"):
        ensure_synthetic_dataset(str(tmp_path), 2, 1, 64, 0)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_too_small_image_size(tmp_path):
    with pytest.raises(ValueError, match="image_size=8"):
        generate(str(tmp_path), 1, 1, 8, 0)


def test_cli(tmp_path, capsys):
    out = str(tmp_path / "cli")
    main(["--out", out, "--num-train", "3", "--num-val", "2", "--image-size", "64", "--seed", "4"])
    assert "3 train, 2 val" in capsys.readouterr().out
    assert len(os.listdir(os.path.join(out, "val2017"))) == 2


def test_concurrent_generation_builds_once_and_keeps_the_first_copy(tmp_path, monkeypatch):
    """Three threads ask for the same dataset while the first one is still writing it: the lock
    makes the others wait and then reuse it (without the lock each would generate and swap in
    its own copy). flock locks separate open() calls even within one process."""
    import threading
    import time

    calls, real = [], synthetic.generate

    def slow_generate(out, *args):
        calls.append(out)
        time.sleep(0.3)  # the other threads arrive while this copy is half-written
        real(out, *args)

    monkeypatch.setattr(synthetic, "generate", slow_generate)
    root = tmp_path / "syn"
    errors = []

    def worker():
        try:
            ensure_synthetic_dataset(str(root), 4, 2, 64, 0)
        except BaseException as e:  # noqa: BLE001 - reported by the assert below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(calls) == 1
    assert sorted(os.listdir(tmp_path)) == ["syn", "syn.lock"]  # no leftover temp or old folders
    assert len(os.listdir(root / "train2017")) == 4
