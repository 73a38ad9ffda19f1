"""A small deterministic COCO-format dataset of coloured shapes on textured backgrounds.

    python -m datasets.synthetic --out DIR [--num-train N --num-val N --image-size S --seed K]

writes ``DIR/train2017/*.jpg``, ``DIR/val2017/*.jpg`` and
``DIR/annotations/instances_{train,val}2017.json``. The class is the shape (colours are
random), so a detector has to learn shape, not colour. Object sides are log-uniform in
[10, 0.55 * S] px, giving COCO small (< 32^2 px), medium and large (> 96^2 px at S=256)
objects. About 10 % of images are empty; boxes overlap little (intersection <= 15 % of
the smaller box, so no object is hidden).
Same arguments -> byte-identical files.
"""
import fcntl
import json
import math
import os
import shutil
import tempfile
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

from util.cli import ArgumentParser

VERSION = 1
MARKER = "synthetic.json"
CATEGORIES = ["rectangle", "ellipse", "triangle", "cross", "ring", "diamond"]  # ids 1..6
EMPTY_FRACTION = 0.1
MAX_OBJECTS = 6
MIN_SIDE = 10
MAX_OVERLAP = 0.15  # intersection / smaller box area
JPEG_QUALITY = 90


# the config file that sets the synthetic_* keys' defaults (the command line below uses them)
DEFAULTS_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "DINO",
                             "DINO_4scale.py")


def _shape_mask(kind: str, w: int, h: int, flip: bool) -> Image.Image:
    """An 'L' mask (w x h) with the shape drawn in 255."""
    mask = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(mask)
    if kind == "rectangle":
        d.rectangle([0, 0, w - 1, h - 1], fill=255)
    elif kind == "ellipse":
        d.ellipse([0, 0, w - 1, h - 1], fill=255)
    elif kind == "triangle":
        apex, base = (0, h - 1) if not flip else (h - 1, 0)
        d.polygon([(0, base), ((w - 1) / 2, apex), (w - 1, base)], fill=255)
    elif kind == "cross":
        tw, th = max(2, w // 3), max(2, h // 3)  # bar thickness
        d.rectangle([(w - tw) // 2, 0, (w - tw) // 2 + tw - 1, h - 1], fill=255)
        d.rectangle([0, (h - th) // 2, w - 1, (h - th) // 2 + th - 1], fill=255)
    elif kind == "ring":
        t = max(2, min(w, h) // 4)
        d.ellipse([0, 0, w - 1, h - 1], fill=255)
        d.ellipse([t, t, w - 1 - t, h - 1 - t], fill=0)
    elif kind == "diamond":
        d.polygon([((w - 1) / 2, 0), (w - 1, (h - 1) / 2), ((w - 1) / 2, h - 1), (0, (h - 1) / 2)], fill=255)
    else:
        raise ValueError(f"unknown shape {kind!r}")
    return mask


def _background(rng: np.random.Generator, size: int) -> Tuple[Image.Image, np.ndarray]:
    """Gradient between two random colours + faint lines + Gaussian noise. Returns (image, mean colour)."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    arr = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):  # texture: low-contrast straight lines
        pts = [tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(2)]
        shade = tuple(int(v) for v in (arr.mean((0, 1)) + rng.normal(0, 25, 3)).clip(0, 255))
        d.line(pts, fill=shade, width=int(rng.integers(1, 4)))
    noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, 10, (size, size, 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8), "RGB"), arr.mean((0, 1))


def _overlap(a: Tuple[float, float, float, float], b: Tuple[float, float, float, float]) -> float:
    """Intersection over the smaller box: bounds how much of either object can be hidden."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / smaller if smaller > 0 else 0.0


def _contrasting_colour(rng: np.random.Generator, bg_mean: np.ndarray) -> Tuple[int, int, int]:
    for _ in range(50):
        c = rng.integers(0, 256, 3)
        if np.abs(c - bg_mean).sum() > 160:
            break
    return tuple(int(v) for v in c)


def make_image(rng: np.random.Generator, size: int) -> Tuple[Image.Image, List[Dict]]:
    """One image and its objects: dicts with category_id, bbox (xywh, tight), area (mask pixels)."""
    img, bg_mean = _background(rng, size)
    objects: List[Dict] = []
    if rng.random() < EMPTY_FRACTION:
        return img, objects
    placed: List[Tuple[float, float, float, float]] = []
    max_side = max(MIN_SIDE + 1, int(0.55 * size))
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        cat = int(rng.integers(1, len(CATEGORIES) + 1))
        side = math.exp(rng.uniform(math.log(MIN_SIDE), math.log(max_side)))
        ratio = math.exp(rng.uniform(math.log(0.6), math.log(1.6)))
        w = int(min(size, max(MIN_SIDE, round(side * math.sqrt(ratio)))))
        h = int(min(size, max(MIN_SIDE, round(side / math.sqrt(ratio)))))
        flip = bool(rng.random() < 0.5)
        for _try in range(20):
            x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            if all(_overlap((x, y, x + w, y + h), p) <= MAX_OVERLAP for p in placed):
                break
        else:
            continue  # no room for this object
        mask = _shape_mask(CATEGORIES[cat - 1], w, h, flip)
        img.paste(_contrasting_colour(rng, bg_mean), (x, y), mask)
        placed.append((x, y, x + w, y + h))
        x0, y0, x1, y1 = mask.getbbox()
        area = int(np.count_nonzero(np.asarray(mask)))
        objects.append({"category_id": cat, "bbox": [x + x0, y + y0, x1 - x0, y1 - y0], "area": area})
    return img, objects


def write_split(out: str, split: str, num_images: int, size: int, seed: int, first_id: int) -> None:
    """Write ``{split}2017/`` JPEGs and ``annotations/instances_{split}2017.json`` under ``out``."""
    img_dir = os.path.join(out, f"{split}2017")
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(os.path.join(out, "annotations"), exist_ok=True)
    images, annotations = [], []
    split_key = 0 if split == "train" else 1
    for k in range(num_images):
        rng = np.random.default_rng([seed, split_key, k])  # per image, so images are independent
        img, objects = make_image(rng, size)
        image_id = first_id + k
        name = f"{image_id:012d}.jpg"
        img.save(os.path.join(img_dir, name), format="JPEG", quality=JPEG_QUALITY)
        images.append({"id": image_id, "file_name": name, "width": size, "height": size})
        for obj in objects:
            x, y, w, h = obj["bbox"]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": obj["category_id"],
                                "bbox": [float(v) for v in obj["bbox"]], "area": float(obj["area"]), "iscrowd": 0,
                                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
    data = {"info": {"description": f"augdetr synthetic shapes v{VERSION}", "seed": seed},
            "images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CATEGORIES)]}
    with open(os.path.join(out, "annotations", f"instances_{split}2017.json"), "w", encoding="utf-8") as f:
        json.dump(data, f)


def generate(out: str, num_train: int, num_val: int, image_size: int, seed: int) -> None:
    """Write the whole dataset into ``out`` (created if needed), marker file last."""
    if image_size < 2 * MIN_SIDE:
        raise ValueError(f"synthetic image_size={image_size} is too small; use at least {2 * MIN_SIDE}")
    write_split(out, "train", num_train, image_size, seed, first_id=1)
    write_split(out, "val", num_val, image_size, seed, first_id=num_train + 1)
    with open(os.path.join(out, MARKER), "w", encoding="utf-8") as f:
        json.dump(_params(num_train, num_val, image_size, seed), f, sort_keys=True)


def _params(num_train: int, num_val: int, image_size: int, seed: int) -> Dict:
    return {"version": VERSION, "num_train": int(num_train), "num_val": int(num_val),
            "image_size": int(image_size), "seed": int(seed)}


def _read_marker(root: str) -> Optional[Dict]:
    try:
        with open(os.path.join(root, MARKER), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def ensure_synthetic_dataset(root: str, num_train: int, num_val: int, image_size: int, seed: int) -> str:
    """Generate the dataset at ``root`` unless its marker already has these parameters; return ``root``.

    Generation goes to a temporary sibling folder that is renamed into place, so an
    interrupted run never leaves a half-written dataset at ``root``; a lock file next to it
    lets concurrent processes (e.g. the ranks of a distributed run) generate it once. A folder at ``root``
    that is not empty and has no marker is never overwritten.
    """
    root = os.path.abspath(os.path.expanduser(str(root)))
    wanted = _params(num_train, num_val, image_size, seed)
    if _read_marker(root) == wanted:
        return root
    if os.path.isdir(root) and os.listdir(root) and _read_marker(root) is None:
        raise FileExistsError(f"synthetic_dir {root} exists, is not empty and is not a synthetic dataset; "
                              "choose another --options synthetic_dir=DIR or empty it")
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    # one generator at a time: a second process waits, then finds the dataset ready instead of
    # replacing the folder the first one may already be reading
    with open(root + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _read_marker(root) == wanted:
            return root
        tmp = tempfile.mkdtemp(prefix=".synthetic-tmp-", dir=parent)
        try:
            generate(tmp, num_train, num_val, image_size, seed)
            if os.path.isdir(root):  # stale parameters: move the old one aside, then swap in
                old = tempfile.mkdtemp(prefix=".synthetic-old-", dir=parent)
                os.rename(root, os.path.join(old, "data"))
                shutil.rmtree(old, ignore_errors=True)
            os.rename(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def main(argv: Optional[List[str]] = None) -> None:
    from util.slconfig import SLConfig
    cfg = SLConfig.fromfile(DEFAULTS_FILE).to_dict()  # the synthetic_* keys' defaults
    p = ArgumentParser(description="Write the synthetic shapes dataset in COCO layout.")
    p.add_argument("--out", required=True, help="output folder (train2017/, val2017/, annotations/)")
    p.add_argument("--num-train", type=int, default=cfg["synthetic_num_train"], help="train images")
    p.add_argument("--num-val", type=int, default=cfg["synthetic_num_val"], help="val images")
    p.add_argument("--image-size", type=int, default=cfg["synthetic_image_size"], help="image side (px)")
    p.add_argument("--seed", type=int, default=cfg["synthetic_seed"], help="generator seed")
    a = p.parse_args(argv)
    t0 = time.time()
    root = ensure_synthetic_dataset(a.out, a.num_train, a.num_val, a.image_size, a.seed)
    print(f"synthetic dataset ready at {root} ({a.num_train} train, {a.num_val} val, "
          f"{a.image_size}px, seed {a.seed}) in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
