"""COCO folder layouts the tests build from the synthetic dataset."""
import json
import os


def make_test_dev_layout(root, synthetic_dir):
    """COCO's test-dev layout made from the synthetic val split: test2017/ and an image-info file
    (images and categories, no annotations)."""
    os.makedirs(root / "annotations")
    os.symlink(os.path.join(synthetic_dir, "val2017"), root / "test2017")
    with open(os.path.join(synthetic_dir, "annotations", "instances_val2017.json")) as f:
        val = json.load(f)
    with open(root / "annotations" / "image_info_test-dev2017.json", "w") as f:
        json.dump({"info": {"description": "test"}, "images": val["images"], "categories": val["categories"]}, f)
    return {img["id"] for img in val["images"]}


def make_custom_layout(root, num_train: int = 5, num_val: int = 2, image_size: int = 96):
    """A user's own COCO-format folder: the synthetic generator's images with the last shape's id moved from
    6 to 7 and a category 'star' added, so the data's class count (max id 7 + 1 = 8) differs from the
    synthetic set's 7. Returns root as str."""
    from datasets.synthetic import ensure_synthetic_dataset

    ensure_synthetic_dataset(str(root), num_train=num_train, num_val=num_val, image_size=image_size, seed=3)
    os.remove(os.path.join(root, "synthetic.json"))  # not a generated set any more
    for split in ("train", "val"):
        path = os.path.join(root, "annotations", f"instances_{split}2017.json")
        with open(path) as f:
            data = json.load(f)
        for ann in data["annotations"]:
            ann["category_id"] = 7 if ann["category_id"] == 6 else ann["category_id"]
        data["categories"] = [c for c in data["categories"] if c["id"] != 6] + [{"id": 7, "name": "star"}]
        with open(path, "w") as f:
            json.dump(data, f)
    return str(root)
