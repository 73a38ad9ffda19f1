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

from datasets.coco import BadImageError, CocoDetection, DataError, category_names
from datasets.coco import build as build_coco


def default_synthetic_dir() -> str:
    cache = os.environ.get("AUGDETR_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "augdetr"))
    return os.path.join(cache, "synthetic-v1")


def dataset_root(args) -> str:
    """The COCO-layout folder ``args`` names: --coco_path for dataset_file='coco', else the synthetic set
    (generated on first use, see datasets/synthetic.py)."""
    if args.dataset_file == "coco":
        if not args.coco_path:
            raise DataError("dataset_file='coco' needs --coco_path /path/to/coco (or use -c "
                            "config/DINO/DINO_synthetic.py for the synthetic dataset)")
        return args.coco_path
    from datasets.synthetic import ensure_synthetic_dataset
    return ensure_synthetic_dataset(args.synthetic_dir or default_synthetic_dir(), num_train=args.synthetic_num_train,
                                    num_val=args.synthetic_num_val, image_size=args.synthetic_image_size,
                                    seed=args.synthetic_seed)


def build_dataset(image_set: str, args) -> torch.utils.data.Dataset:
    """Builder reading ``args.dataset_file`` ('coco' or 'synthetic') and the data keys of ``args``."""
    return build_coco(image_set, args, dataset_root(args))


def get_coco_api_from_dataset(dataset):
    """The pycocotools COCO ground truth behind ``dataset`` (unwrapping torch Subsets)."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    if not hasattr(dataset, "coco"):
        raise DataError(f"{type(dataset).__name__} has no COCO ground truth ('.coco'); use a datasets.CocoDetection")
    return dataset.coco


__all__ = ["BadImageError", "CocoDetection", "DataError", "build_dataset", "category_names", "dataset_root",
           "get_coco_api_from_dataset", "default_synthetic_dir"]
