"""Data pipeline: COCO-format datasets, DINO transforms, a synthetic dataset and COCO evaluation.

Each dataset item is ``(image, target)``:

* image: float (3, H, W), normalised with ImageNet mean/std.
* target: ``boxes`` (K, 4) float, normalised cxcywh in the transformed image;
  ``labels`` (K,) int64 raw COCO category ids; ``image_id`` int64 scalar;
  ``orig_size`` (2,) int64 (h, w) of the stored image; ``size`` (2,) int64 (h, w)
  after transforms; ``area`` (K,) float; ``iscrowd`` (K,) int64 (always 0: crowd
  boxes are kept only in the COCO ground truth used for evaluation).
"""
import os

import torch

from datasets.coco import BadImageError, CocoDetection, DataError, build as build_coco


def default_synthetic_dir() -> str:
    cache = os.environ.get("AUGDETR_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "augdetr"))
    return os.path.join(cache, "synthetic-v1")


def build_dataset(image_set: str, args) -> torch.utils.data.Dataset:
    """Builder reading ``args.dataset_file`` ('coco' or 'synthetic') and the data keys of ``args``."""
    name = getattr(args, "dataset_file", "coco")
    if name == "coco":
        return build_coco(image_set, args)
    if name == "synthetic":
        from datasets.synthetic import DEFAULTS, ensure_synthetic_dataset

        def opt(key):
            value = getattr(args, f"synthetic_{key}", None)
            return DEFAULTS[key] if value is None else value

        root = ensure_synthetic_dataset(
            getattr(args, "synthetic_dir", None) or default_synthetic_dir(),
            num_train=int(opt("num_train")), num_val=int(opt("num_val")),
            image_size=int(opt("image_size")), seed=int(opt("seed")))
        return build_coco(image_set, args, root=root)
    raise DataError(f"unknown dataset_file {name!r}: use 'coco' or 'synthetic'")


def get_coco_api_from_dataset(dataset):
    """The pycocotools COCO ground truth behind ``dataset`` (unwrapping torch Subsets)."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    if not hasattr(dataset, "coco"):
        raise DataError(f"{type(dataset).__name__} has no COCO ground truth ('.coco'); use a datasets.CocoDetection")
    return dataset.coco


__all__ = ["BadImageError", "CocoDetection", "DataError", "build_dataset", "get_coco_api_from_dataset",
           "default_synthetic_dir"]
