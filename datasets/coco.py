"""COCO-format detection dataset with DINO's targets and strict input checks.

Layout at ``coco_path``: ``train2017/``, ``val2017/``, ``annotations/instances_{train,val}2017.json``;
for test-dev (``--test``) also ``test2017/`` and ``annotations/image_info_test-dev2017.json``.

Conventions:

* Labels are the raw ``category_id`` values (no remapping); a model needs
  ``num_classes > max id`` and ``dn_labelbook_size >= max id``.
* EXIF orientation is NOT applied. COCO (and pycocotools) boxes refer to the stored
  pixel array, so rotating the image by its EXIF tag would misplace every box. The
  stored size must equal the JSON ``width``/``height``; a mismatch is a bad image.
* Every PIL mode is converted to 8-bit RGB; 16-bit grayscale is scaled (>> 8), not clipped.
* Crowd boxes (``iscrowd=1``) are removed from targets but stay in ``self.coco`` for
  evaluation. Boxes are converted xywh -> xyxy, clipped to the image, and boxes with
  no width or height after clipping are dropped and counted in ``num_degenerate_boxes``.
* Missing / truncated / non-image files raise :class:`BadImageError`; with
  ``skip_bad_images=True`` the item is replaced by the next readable one, a warning is
  given once per file, and ``num_skipped_images`` counts the distinct files skipped
  (per process: each DataLoader worker holds its own copy). The item returned in place
  of skipped ones carries their ids in ``target["skipped_image_ids"]`` (a list, present
  only then) so the training loop can count them across workers into log.txt.
"""
import contextlib
import io
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO

from datasets.transforms import make_boxes, make_coco_transforms, scaled_aug_sizes


class DataError(ValueError):
    """Bad dataset input (path, JSON content, option). The message is one line and names the fix."""


class BadImageError(DataError):
    """An image file that is missing, truncated, not an image, or of the wrong size."""


def load_coco_json(ann_file: str, images_only: bool = False) -> Dict[str, Any]:
    """Read and check a COCO instances JSON; fill optional annotation fields (id, area, iscrowd).

    images_only: an image-info file (COCO's image_info_test-dev2017.json) with no 'annotations'
    list is accepted and gets an empty one.
    """
    try:
        with open(ann_file, "r", encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"annotation file {ann_file} does not exist; check --coco_path") from None
    except json.JSONDecodeError as e:
        raise DataError(f"annotation file {ann_file} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}; "
                        "fix or regenerate the file") from None
    if not isinstance(data, dict):
        raise DataError(f"annotation file {ann_file}: top level must be an object with 'images', 'annotations', "
                        f"'categories'")
    if images_only:
        data.setdefault("annotations", [])
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"annotation file {ann_file}: missing required list '{key}' (COCO instances format)")
    _check_entries(ann_file, "images", data["images"], ("id", "file_name", "width", "height"))
    _check_entries(ann_file, "categories", data["categories"], ("id",))
    _check_entries(ann_file, "annotations", data["annotations"], ("bbox", "category_id", "image_id"))
    image_ids = set()
    for i, img in enumerate(data["images"]):
        if img["id"] in image_ids:
            raise DataError(f"annotation file {ann_file}: images[{i}] repeats image id {img['id']!r}; "
                            f"ids must be unique")
        image_ids.add(img["id"])
    used_ids = {a["id"] for a in data["annotations"] if "id" in a}
    next_id = max((i for i in used_ids if isinstance(i, int)), default=0) + 1
    for i, ann in enumerate(data["annotations"]):
        bbox = ann["bbox"]
        if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)):
            raise DataError(f"annotation file {ann_file}: annotations[{i}] has bbox {bbox!r}; expected [x, y, w, h] "
                            f"finite numbers")
        if ann["image_id"] not in image_ids:
            raise DataError(f"annotation file {ann_file}: annotations[{i}] refers to image_id {ann['image_id']!r} "
                            f"not in 'images'")
        # pycocotools' evaluator needs these; COCO files from other tools often omit them.
        if "id" not in ann:
            ann["id"] = next_id
            next_id += 1
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(bbox[2]) * float(bbox[3]))
    return data


def _check_entries(ann_file: str, key: str, entries: List, fields: Tuple[str, ...]) -> None:
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataError(f"annotation file {ann_file}: {key}[{i}] is not an object")
        for field in fields:
            if field not in entry:
                raise DataError(f"annotation file {ann_file}: {key}[{i}] is missing required field '{field}'")


def check_category_ids(data: Dict[str, Any], ann_file: str, num_classes: Optional[int],
                       dn_labelbook_size: Optional[int]) -> None:
    """Every category id must be a known category, < num_classes and <= dn_labelbook_size."""
    cat_ids = {c["id"] for c in data["categories"]}
    for i, ann in enumerate(data["annotations"]):
        if ann["category_id"] not in cat_ids:
            raise DataError(f"annotation file {ann_file}: annotations[{i}] uses category_id {ann['category_id']!r} "
                            "not listed in 'categories'")
    all_ids = cat_ids
    bad = [c for c in all_ids if not isinstance(c, int) or c < 0]
    if bad:
        raise DataError(f"annotation file {ann_file}: category id {bad[0]!r} is not a non-negative integer")
    if not all_ids:
        return
    top = max(all_ids)
    fix = f"set --options num_classes={top + 1}" + (f" dn_labelbook_size={top + 1}" if dn_labelbook_size else "")
    if num_classes is not None and top >= num_classes:
        raise DataError(f"annotation file {ann_file}: category id {top} >= num_classes={num_classes} "
                        f"(labels are raw ids, so num_classes must be max id + 1); {fix}")
    if dn_labelbook_size is not None and top > dn_labelbook_size:
        raise DataError(f"annotation file {ann_file}: category id {top} > dn_labelbook_size={dn_labelbook_size}; {fix}")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. 16/32-bit integer grayscale is scaled from 16 bits, not clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.int64)
        arr = np.clip(arr, 0, 65535) >> 8  # 16-bit range -> 8-bit
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8), mode="L")
    elif img.mode in ("P", "PA") and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL warns if palette transparency goes straight to RGB
    return img if img.mode == "RGB" else img.convert("RGB")


def load_rgb_image(path: str, expected_hw: Optional[Tuple[int, int]] = None) -> Image.Image:
    """Open ``path`` fully (so truncation is caught here) as RGB; check its (h, w) if given."""
    fix = "fix or remove the file, or set --options skip_bad_images=True to skip it"
    if not os.path.isfile(path):
        raise BadImageError(f"image file {path} does not exist; {fix}")
    try:
        with Image.open(path) as img:
            img.load()
            rgb = _to_rgb(img)
    except (OSError, ValueError, SyntaxError) as e:  # PIL: UnidentifiedImageError, truncated data, bad headers
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BadImageError(f"cannot read image file {path}: {reason}; {fix}") from None
    if expected_hw is not None and (rgb.height, rgb.width) != tuple(expected_hw):
        raise BadImageError(f"image file {path} is {rgb.width}x{rgb.height} but the annotation JSON says "
                            f"{expected_hw[1]}x{expected_hw[0]} (width x height); {fix}")
    return rgb


class CocoDetection(torch.utils.data.Dataset):
    """COCO-format detection dataset yielding ``(image, target)`` (see :mod:`datasets` for the format).

    Attributes: ``coco`` (pycocotools COCO, crowd boxes included), ``ids`` (image ids in
    index order), ``num_degenerate_boxes``, ``num_skipped_images``.
    """

    def __init__(self, img_folder: str, ann_file: str, transforms: Optional[Callable] = None,
                 num_classes: Optional[int] = None, dn_labelbook_size: Optional[int] = None,
                 skip_bad_images: bool = False, images_only: bool = False):
        self.img_folder = str(img_folder)
        self.ann_file = str(ann_file)
        self.transforms = transforms
        self.skip_bad_images = bool(skip_bad_images)
        data = load_coco_json(self.ann_file, images_only=images_only)
        check_category_ids(data, self.ann_file, num_classes, dn_labelbook_size)
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
            self.coco.createIndex()
        self.ids = sorted(self.coco.imgs.keys())
        self.num_degenerate_boxes = 0
        self.num_skipped_images = 0
        self._bad_ids = set()
        self._targets = {img_id: self._clean_annotations(img_id) for img_id in self.ids}

    def _clean_annotations(self, img_id: int) -> Dict[str, np.ndarray]:
        """Non-crowd boxes of one image as xyxy clipped to it; degenerate boxes dropped and counted."""
        info = self.coco.imgs[img_id]
        w, h = float(info["width"]), float(info["height"])
        anns = [a for a in self.coco.imgToAnns.get(img_id, []) if not a.get("iscrowd", 0)]
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        self.num_degenerate_boxes += int((~keep).sum())
        return {
            "boxes": boxes[keep],
            "labels": np.array([a["category_id"] for a in anns], dtype=np.int64)[keep],
            "area": np.array([a["area"] for a in anns], dtype=np.float32)[keep],
            "iscrowd": np.zeros(int(keep.sum()), dtype=np.int64),
        }

    def __len__(self) -> int:
        return len(self.ids)

    def _load(self, index: int) -> Image.Image:
        info = self.coco.imgs[self.ids[index]]
        path = os.path.join(self.img_folder, info["file_name"])
        return load_rgb_image(path, (int(info["height"]), int(info["width"])))

    def __getitem__(self, index: int):
        skipped = []
        for step in range(len(self)):
            i = (index + step) % len(self)
            try:
                img = self._load(i)
            except BadImageError as e:
                if not self.skip_bad_images:
                    raise
                skipped.append(self.ids[i])
                if self.ids[i] not in self._bad_ids:
                    self._bad_ids.add(self.ids[i])
                    self.num_skipped_images = len(self._bad_ids)
                    warnings.warn(f"skip_bad_images: skipped {str(e).split('; ')[0]}", stacklevel=2)
                continue
            img, target = self._make_item(i, img)
            if skipped:
                target["skipped_image_ids"] = skipped
            return img, target
        raise DataError(f"no readable image in {self.img_folder}: all {len(self)} files are bad")

    def _make_item(self, index: int, img: Image.Image):
        img_id = self.ids[index]
        raw = self._targets[img_id]
        h, w = img.height, img.width
        target = {
            "boxes": make_boxes(torch.from_numpy(raw["boxes"].copy()), h, w),
            "labels": torch.from_numpy(raw["labels"].copy()),
            "area": torch.from_numpy(raw["area"].copy()),
            "iscrowd": torch.from_numpy(raw["iscrowd"].copy()),
            "image_id": torch.tensor(img_id, dtype=torch.int64),
            "orig_size": torch.tensor([h, w], dtype=torch.int64),
        }
        if self.transforms is not None:
            img, target = self.transforms(img, target)
        else:
            target["boxes"] = target["boxes"].as_subclass(torch.Tensor)
            target["size"] = torch.tensor([h, w], dtype=torch.int64)
        return img, target


def transforms_from_args(image_set: str, args):
    """DINO's transforms from the data_aug_* / fix_size keys of ``args``."""
    scales, max_size, scales2_resize, scales2_crop = scaled_aug_sizes(
        args.data_aug_scales, args.data_aug_max_size, args.data_aug_scales2_resize, args.data_aug_scales2_crop,
        args.data_aug_scale_overlap)
    return make_coco_transforms(image_set, scales, max_size, scales2_resize, scales2_crop, fix_size=args.fix_size)


# image_set -> (image folder, annotation file) inside coco_path; 'test' is COCO test-dev: the
# test2017 images listed in the image-info file of COCO's evaluation server (no annotations)
SPLITS = {"train": ("train2017", "instances_train2017.json"), "val": ("val2017", "instances_val2017.json"),
          "test": ("test2017", "image_info_test-dev2017.json")}


def split_files(root: Optional[str], image_set: str) -> Tuple[Path, Path]:
    """(image folder, annotation file) of split `image_set` ('train', 'val' or 'test') in the COCO layout
    at `root`; DataError naming what is missing."""
    if image_set not in SPLITS:
        raise DataError(f"unknown image_set {image_set!r}: use 'train', 'val' or 'test'")
    if not root or not os.path.isdir(root):
        raise DataError(f"coco_path {root!r} is not a directory; pass --coco_path DIR with train2017/, val2017/, "
                        f"annotations/")
    folder, ann_name = SPLITS[image_set]
    img_folder = Path(root) / folder
    ann_file = Path(root) / "annotations" / ann_name
    if not img_folder.is_dir():
        raise DataError(f"image folder {img_folder} is missing; coco_path must hold {folder}/ with the images")
    if not ann_file.is_file():
        raise DataError(f"annotation file {ann_file} is missing; coco_path must hold annotations/{ann_name}")
    return img_folder, ann_file


def category_names(root: str, image_set: str) -> Dict[int, str]:
    """Category id -> name of split `image_set` at `root` (a category without a name gets 'class <id>');
    the annotation file is read and checked as the dataset reads it."""
    _, ann_file = split_files(root, image_set)
    data = load_coco_json(str(ann_file), images_only=image_set == "test")
    check_category_ids(data, str(ann_file), None, None)
    return {int(c["id"]): str(c.get("name") or f"class {c['id']}") for c in data["categories"]}


def build(image_set: str, args, root: Optional[str] = None) -> CocoDetection:
    """Builder: COCO layout at ``root`` (None: ``args.coco_path``) for 'train', 'val' or 'test'
    (transforms and classes from ``args``)."""
    img_folder, ann_file = split_files(args.coco_path if root is None else root, image_set)
    transforms = transforms_from_args("train" if image_set == "train" else "val", args)  # test: val's
    # ids are checked against num_classes only: a detector with a denoising label book (DINO) has
    # dn_labelbook_size >= num_classes - 1 by its config check, and the others have none
    return CocoDetection(img_folder, ann_file, transforms=transforms, num_classes=args.num_classes,
                         skip_bad_images=args.skip_bad_images,
                         images_only=image_set == "test")
