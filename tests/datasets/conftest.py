import json

import pytest
from PIL import Image

from datasets.synthetic import ensure_synthetic_dataset


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A tiny synthetic dataset shared by the data tests (12 train, 6 val, 128 px)."""
    return ensure_synthetic_dataset(str(tmp_path_factory.mktemp("syn") / "data"),
                                    num_train=12, num_val=6, image_size=128, seed=3)


@pytest.fixture
def make_coco(tmp_path):
    """Factory writing a one-split COCO layout: make_coco(images, annotations, split='val', ...).

    images: list of (file_name, PIL image or bytes or None) -> entries with ids 1..N and the
    PIL size (or 'size' given as (w, h) for bytes/None).
    """
    def make(images, annotations, split="val", categories=None, size=(40, 30), raw_json=None):
        root = tmp_path / "coco"
        (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
        (root / "annotations").mkdir(exist_ok=True)
        entries = []
        for i, (name, content) in enumerate(images, start=1):
            path = root / f"{split}2017" / name
            w, h = size
            if isinstance(content, Image.Image):
                content.save(path)
                w, h = content.size
            elif isinstance(content, bytes):
                path.write_bytes(content)
            entries.append({"id": i, "file_name": name, "width": w, "height": h})
        cats = categories if categories is not None else [{"id": i, "name": f"c{i}"} for i in range(1, 7)]
        ann_path = root / "annotations" / f"instances_{split}2017.json"
        if raw_json is not None:
            ann_path.write_text(raw_json)
        else:
            ann_path.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": cats}))
        return str(root)

    return make
