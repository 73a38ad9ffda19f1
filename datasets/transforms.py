"""DINO's paired image + target augmentations, built on torchvision.transforms.v2.

A sample is ``(image, target)`` where ``image`` is a PIL image (RGB) and ``target``
holds ``boxes`` as ``tv_tensors.BoundingBoxes`` (XYXY, absolute pixels), plus
``labels`` (K,), ``area`` (K,) and ``iscrowd`` (K,) tensors that must stay aligned
with the boxes. The last step (:class:`FinalizeTarget`) turns the image into a
normalised (3, H, W) float tensor and the boxes into normalised cxcywh (K, 4).

Pipelines (see :func:`make_coco_transforms`):

* train: hflip(0.5), then 50/50 either ``RandomResize(scales, max_size)`` or
  ``RandomResize(scales2_resize) -> RandomSizeCrop(*scales2_crop) -> RandomResize(scales, max_size)``.
* val: resize short side to ``max(scales)`` with long side <= ``max_size``.
* fix_size train: hflip(0.5) then one resize to exactly (max(scales), max_size) (h, w),
  as DINO does (aspect ratio is not kept).

Library ops where they are equal: ``v2.Compose`` chains the steps and ``v2.RandomHorizontalFlip``
flips image and boxes (same draws: ``torch.rand``). DINO's own ops stay where v2's differ:
RandomResize (v2.RandomShortestSize scales both sides by one ratio and truncates, DETR rounds
the capped short side, truncates the long side and keeps an image already at size; it also
draws from torch's generator, DINO's from Python's ``random``),
RandomSizeCrop (v2.RandomCrop has one fixed size, v2.RandomResizedCrop draws area/aspect
instead of a width and height each in [min, max]), and RandomSelect (see its docstring).

Differences from DINO's hand-written transforms, on purpose: the crop drops boxes
narrower/shorter than 1 px (tv ``SanitizeBoundingBoxes`` minimum) where DINO drops
only 0-px ones; and when an image side is smaller than the crop's minimum, the crop
uses the whole side instead of raising.
"""
import random
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torchvision import tv_tensors
from torchvision.ops import box_convert
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def detr_resize_size(h: int, w: int, size: int, max_size: Optional[int] = None) -> Tuple[int, int]:
    """Output (h, w) of DETR's resize: short side -> ``size``, long side capped at ``max_size``.

    If the long side would exceed ``max_size``, the short side becomes
    ``int(round(max_size * short / long))``. The long side is then ``int(size * long / short)``
    (truncated, as DETR does), and an image whose short side already equals ``size`` is kept.
    """
    short, long = (w, h) if w <= h else (h, w)
    if max_size is not None and long / short * size > max_size:
        size = int(round(max_size * short / long))
    if short == size:
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


def _sample_size(img: Any) -> Tuple[int, int]:
    h, w = F.get_size(img)
    return int(h), int(w)


def _resize_sample(img, target: Dict[str, Any], out_h: int, out_w: int):
    """Resize image and boxes to exactly (out_h, out_w); area scales with the pixel ratio."""
    h, w = _sample_size(img)
    img = F.resize(img, [out_h, out_w])
    target = dict(target)
    if "boxes" in target:
        target["boxes"] = F.resize(target["boxes"], [out_h, out_w])
    if "area" in target:
        target["area"] = target["area"] * ((out_h / h) * (out_w / w))
    return img, target


class RandomResize:
    """Resize with DETR's rule to a short side drawn uniformly from ``sizes`` (``random.choice``).

    ``sizes`` may also hold (w, h) pairs: those are used as the exact output size.
    """

    def __init__(self, sizes: Sequence, max_size: Optional[int] = None):
        if len(sizes) == 0:
            raise ValueError("RandomResize needs at least one size (check data_aug_scales)")
        self.sizes = list(sizes)
        self.max_size = max_size

    def __call__(self, img, target):
        size = random.choice(self.sizes)
        h, w = _sample_size(img)
        if isinstance(size, (list, tuple)):
            out_h, out_w = int(size[1]), int(size[0])
        else:
            out_h, out_w = detr_resize_size(h, w, int(size), self.max_size)
        return _resize_sample(img, target, out_h, out_w)


def _crop_aligned(sample):
    """labels_getter for SanitizeBoundingBoxes: every per-box tensor that must be filtered too."""
    target = sample[1]
    return tuple(target[k] for k in ("labels", "area", "iscrowd") if k in target)


class RandomSizeCrop:
    """Random crop whose width is randint(min_size, min(img_w, max_size)), height likewise.

    Boxes are clipped to the crop (ClampBoundingBoxes) and boxes left with < 1 px side are
    removed with their labels/area/iscrowd (SanitizeBoundingBoxes). Areas of kept boxes are
    recomputed from the clipped boxes, as DETR does after a crop.
    """

    def __init__(self, min_size: int, max_size: int):
        if min_size > max_size:
            raise ValueError(f"RandomSizeCrop: min_size {min_size} > max_size {max_size} (check data_aug_scales2_crop)")
        self.min_size = int(min_size)
        self.max_size = int(max_size)
        self.clamp = v2.ClampBoundingBoxes()
        self.sanitize = v2.SanitizeBoundingBoxes(labels_getter=_crop_aligned)

    def _side(self, length: int) -> int:
        upper = min(length, self.max_size)
        return random.randint(min(self.min_size, upper), upper)

    def __call__(self, img, target):
        h, w = _sample_size(img)
        crop_w, crop_h = self._side(w), self._side(h)
        top = random.randint(0, h - crop_h)
        left = random.randint(0, w - crop_w)
        img = F.crop(img, top, left, crop_h, crop_w)
        target = dict(target)
        if "boxes" not in target:
            return img, target
        target["boxes"] = F.crop(target["boxes"], top, left, crop_h, crop_w)
        img, target = self.clamp(img, target)
        img, target = self.sanitize(img, target)
        if "area" in target:
            b = target["boxes"]
            target["area"] = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).to(target["area"].dtype)
        return img, target


class RandomSelect:
    """Apply ``first`` with probability ``p``, else ``second``.

    Kept instead of ``v2.RandomChoice``: that op draws with ``torch.multinomial`` from torch's
    generator, while this one (as DINO's) draws ``random.random()`` from Python's, like
    RandomResize and RandomSizeCrop; switching would change every run's augmentation stream
    (torch's draws feed the flips too), hence the numbers of every existing run.
    """

    def __init__(self, first, second, p: float = 0.5):
        self.first, self.second, self.p = first, second, p

    def __call__(self, img, target):
        return self.first(img, target) if random.random() < self.p else self.second(img, target)


class FinalizeTarget:
    """Image -> normalised float (3, H, W); boxes -> plain (K, 4) cxcywh in [0, 1]; adds 'size'."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.to_float = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
        self.normalize = v2.Normalize(list(mean), list(std))

    def __call__(self, img, target):
        image = self.normalize(self.to_float(img)).as_subclass(torch.Tensor)
        h, w = int(image.shape[-2]), int(image.shape[-1])
        target = dict(target)
        if "boxes" in target:
            boxes = target["boxes"].as_subclass(torch.Tensor).to(torch.float32)
            scale = torch.tensor([w, h, w, h], dtype=torch.float32)
            target["boxes"] = box_convert(boxes, "xyxy", "cxcywh") / scale
        target["size"] = torch.tensor([h, w], dtype=torch.int64)
        return image, target


def make_boxes(xyxy: torch.Tensor, h: int, w: int) -> tv_tensors.BoundingBoxes:
    """Wrap (K, 4) absolute xyxy boxes for an (h, w) image as tv BoundingBoxes."""
    return tv_tensors.BoundingBoxes(xyxy.reshape(-1, 4).to(torch.float32), format="XYXY", canvas_size=(h, w))


def scaled_aug_sizes(scales, max_size, scales2_resize, scales2_crop, overlap=None):
    """DINO's ``data_aug_scale_overlap``: when set and > 0, multiply every size by it (int())."""
    if overlap is not None and float(overlap) > 0:
        f = float(overlap)
        scales = [int(s * f) for s in scales]
        max_size = int(max_size * f)
        scales2_resize = [int(s * f) for s in scales2_resize]
        scales2_crop = [int(s * f) for s in scales2_crop]
    return list(scales), int(max_size), list(scales2_resize), list(scales2_crop)


def make_coco_transforms(image_set: str, scales: Sequence[int], max_size: int,
                         scales2_resize: Sequence[int], scales2_crop: Sequence[int],
                         fix_size: bool = False) -> v2.Compose:
    """DINO's train / val pipeline (see the module docstring)."""
    if len(scales2_crop) != 2:
        raise ValueError(f"data_aug_scales2_crop must be [min, max], got {list(scales2_crop)}")
    final = FinalizeTarget()
    if image_set == "train":
        if fix_size:
            return v2.Compose([v2.RandomHorizontalFlip(), RandomResize([(max_size, max(scales))]), final])
        return v2.Compose([
            v2.RandomHorizontalFlip(),
            RandomSelect(
                RandomResize(scales, max_size=max_size),
                v2.Compose([
                    RandomResize(scales2_resize),
                    RandomSizeCrop(*scales2_crop),
                    RandomResize(scales, max_size=max_size),
                ]),
            ),
            final,
        ])
    if image_set == "val":
        return v2.Compose([RandomResize([max(scales)], max_size=max_size), final])
    raise ValueError(f"unknown image_set {image_set!r}: use 'train' or 'val'")
