"""The data keys: which dataset, its augmentation sizes, evaluation and the synthetic set."""
from util.config_schema import Key, KeyGroup, bool_key, choice_key, float_key, int_key

SIZES = dict(low=1)  # image sizes in pixels


def _crop_is_ordered(cfg):
    lo, hi = cfg["data_aug_scales2_crop"]
    if lo > hi:
        return f"data_aug_scales2_crop={cfg['data_aug_scales2_crop']} must be [min, max]; swap them"
    return None


DATA_KEYS = KeyGroup("data", "data", {
    "data_aug_scales": Key("list[int]", "train short-side sizes (val: the largest)", length=(1, None), **SIZES),
    "data_aug_max_size": int_key("longest image side after resizing (px)", 1),
    "data_aug_scales2_resize": Key("list[int]", "short sides of the resize before the random crop", length=(1, None),
                                   **SIZES),
    "data_aug_scales2_crop": Key("list[int]", "min and max side of the random crop (px)", length=(2, 2), **SIZES),
    "data_aug_scale_overlap": float_key("scale all data_aug sizes by this factor (none = 1)", 0, low_open=True,
                                        none_ok=True),
    "dataset_file": choice_key("dataset: COCO layout at --coco_path, or the generated synthetic set",
                               "coco", "synthetic"),
    "fix_size": bool_key("train transform = flip + one fixed resize"),
    "skip_bad_images": bool_key("skip unreadable images with a warning instead of failing"),
    "val_batch_size": int_key("evaluation images per batch (DINO uses 1: padding changes AP)", 1),
    "synthetic_dir": Key("str", "folder of the generated synthetic dataset (none = ~/.cache/augdetr)", none_ok=True),
    "synthetic_num_train": int_key("synthetic train images", 1),
    "synthetic_num_val": int_key("synthetic val images", 1),
    "synthetic_image_size": int_key("synthetic image side (px)", 32),
    "synthetic_seed": int_key("seed of the synthetic dataset's generator", 0),
    "eval_backend": choice_key("COCO evaluation library", "pycocotools", "faster_coco_eval"),
}, relations=(_crop_is_ordered,),
    flags={"dataset_file": ("--dataset_file",), "fix_size": ("--fix_size",), "eval_backend": ("--eval_backend",)})
