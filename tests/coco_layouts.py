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
