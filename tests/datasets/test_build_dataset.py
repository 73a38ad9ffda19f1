import os

import pytest
import torch
from pycocotools.coco import COCO

from datasets import DataError, build_dataset, default_synthetic_dir, get_coco_api_from_dataset
from util.slconfig import ConfigError

from data_helpers import data_args


def test_build_coco_and_api(synthetic_root):
    ds = build_dataset("train", data_args(coco_path=synthetic_root))
    assert len(ds) == 12
    api = get_coco_api_from_dataset(torch.utils.data.Subset(torch.utils.data.Subset(ds, [0, 1]), [0]))
    assert isinstance(api, COCO) and api is ds.coco


def test_build_synthetic_generates_into_synthetic_dir(tmp_path):
    args = data_args(dataset_file="synthetic", synthetic_dir=str(tmp_path / "syn"), synthetic_num_train=3,
                     synthetic_num_val=2, synthetic_image_size=64, synthetic_seed=0)
    val = build_dataset("val", args)
    assert len(val) == 2 and len(build_dataset("train", args)) == 3
    image, target = val[0]
    assert image.shape[0] == 3 and target["orig_size"].tolist() == [64, 64]


def test_default_synthetic_dir_uses_env(monkeypatch, tmp_path):
    monkeypatch.setenv("AUGDETR_CACHE", str(tmp_path))
    assert default_synthetic_dir() == os.path.join(str(tmp_path), "synthetic-v1")
    monkeypatch.delenv("AUGDETR_CACHE")
    assert default_synthetic_dir().endswith(os.path.join(".cache", "augdetr", "synthetic-v1"))


def test_unknown_dataset_file_and_split(synthetic_root):
    with pytest.raises(ConfigError, match="dataset_file='voc' is not allowed"):
        data_args(dataset_file="voc")
    with pytest.raises(DataError, match="needs --coco_path"):
        build_dataset("val", data_args())
    with pytest.raises(DataError, match="'minival'"):
        build_dataset("minival", data_args(coco_path=synthetic_root))
    with pytest.raises(DataError, match="test2017/ with the images"):  # test-dev needs its own folder
        build_dataset("test", data_args(coco_path=synthetic_root))


def test_api_needs_coco_dataset():
    with pytest.raises(DataError, match="no COCO ground truth"):
        get_coco_api_from_dataset(torch.utils.data.TensorDataset(torch.zeros(2)))


def test_category_names_read_the_split_checked(synthetic_root, tmp_path):
    from datasets import category_names
    names = category_names(synthetic_root, "train")
    assert names == {1: "rectangle", 2: "ellipse", 3: "triangle", 4: "cross", 5: "ring", 6: "diamond"}
    with pytest.raises(DataError, match="test2017/ with the images"):
        category_names(synthetic_root, "test")
    with pytest.raises(DataError, match="is not a directory"):
        category_names(str(tmp_path / "none"), "val")
