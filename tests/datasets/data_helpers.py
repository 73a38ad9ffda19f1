"""Plain helpers for the data tests (fixtures live in conftest.py)."""
import argparse
import os


def data_args(**overrides):
    """An args namespace with the data keys build_dataset reads (tiny sizes)."""
    from engine.config import default_schema, load_config
    coco_path = overrides.pop("coco_path", None)  # a command-line flag, not a config key
    cfg = load_config(default_schema().defaults_file, dict(dict(
        dataset_file="coco", num_classes=7, dn_labelbook_size=7, data_aug_scales=[96, 128], data_aug_max_size=200,
        data_aug_scales2_resize=[100, 120], data_aug_scales2_crop=[64, 100]), **overrides))
    return argparse.Namespace(coco_path=coco_path, **cfg)


def file_digest(root):
    """{relative path: bytes} of every file under root, for byte-identity checks."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out
