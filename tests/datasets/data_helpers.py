"""Plain helpers for the data tests (fixtures live in conftest.py)."""
import argparse
import os


def data_args(**overrides):
    """An args namespace with the data keys build_dataset reads (tiny sizes)."""
    base = dict(dataset_file="coco", coco_path=None, num_classes=7, dn_labelbook_size=7,
                data_aug_scales=[96, 128], data_aug_max_size=200, data_aug_scales2_resize=[100, 120],
                data_aug_scales2_crop=[64, 100], data_aug_scale_overlap=None, fix_size=False)
    base.update(overrides)
    return argparse.Namespace(**base)


def file_digest(root):
    """{relative path: bytes} of every file under root, for byte-identity checks."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out
