"""--coco_path means the COCO-format data at that path is used (issue 26, item 1): the default (synthetic)
config switches to it, with the class count read from the data, and never trains on the synthetic set."""
import json
import os

import pytest

import main
from util.slconfig import ConfigError

from coco_layouts import make_custom_layout
from tiny_configs import RUN, options


@pytest.fixture(scope="module")
def custom(tmp_path_factory):
    return make_custom_layout(tmp_path_factory.mktemp("my_data"))


def test_coco_path_switches_the_default_config_to_the_data(custom):
    args = main.build_args(["--coco_path", custom])
    assert args.config_file == "config/DINO/DINO_synthetic.py"
    assert (args.dataset_file, args.num_classes, args.dn_labelbook_size) == ("coco", 8, 8)
    assert args.setup_notes == [
        f"--coco_path {custom}: dataset_file='coco' (the config config/DINO/DINO_synthetic.py names the synthetic "
        f"set); num_classes=8 and dn_labelbook_size=8 from its 6 categories (max id 7 + 1; --options num_classes=N "
        f"sets another)"]
    # the synthetic AugDETR config too; a COCO config already reads coco_path and keeps its 91 classes
    assert main.build_args(["-c", "config/AugDETR/AugDETR_synthetic.py", "--coco_path", custom]).num_classes == 8
    coco = main.build_args(["-c", "config/DINO/DINO_4scale.py", "--coco_path", custom])
    assert (coco.dataset_file, coco.num_classes) == ("coco", 91) and not getattr(coco, "setup_notes", [])
    assert main.build_args([]).dataset_file == "synthetic"  # no --coco_path: the synthetic set


def test_class_count_given_by_the_user_is_kept(custom):
    args = main.build_args(["--coco_path", custom, "--options", "num_classes=12", "dn_labelbook_size=12"])
    assert (args.dataset_file, args.num_classes, args.dn_labelbook_size) == ("coco", 12, 12)
    assert "from its" not in args.setup_notes[0]
    args = main.build_args(["--coco_path", custom, "--options", "dn_labelbook_size=20"])
    assert (args.num_classes, args.dn_labelbook_size) == (8, 20)


@pytest.mark.parametrize("asked", [["--dataset_file", "synthetic"], ["--options", "dataset_file=synthetic"]])
def test_synthetic_asked_for_with_coco_path_is_an_error(custom, asked):
    with pytest.raises(ConfigError, match=f"--coco_path {custom} and {' '.join(asked).replace('=', '=')} contradict "
                                          f"each other"):
        main.build_args(["--coco_path", custom, *asked])


def test_coco_path_without_the_layout_exits_2(tmp_path, capsys):
    assert main.cli(["--coco_path", str(tmp_path)]) == 2
    assert "image folder" in capsys.readouterr().err


def test_a_run_with_coco_path_trains_and_evaluates_on_that_data(tmp_path, custom):
    """5 train images at batch 4 are 1 iteration, 2 val images 2: not the synthetic set's 60 and 48."""
    sizes = {k: v for k, v in RUN.items() if k not in ("num_classes", "dn_labelbook_size")}
    main.main(main.build_args(["--output_dir", str(tmp_path), "--num_workers", "0", "--device", "cpu",
                               "--coco_path", custom, "--options", *options(sizes, epochs=1)]))
    with open(tmp_path / "config_args_all.json") as f:
        saved = json.load(f)
    assert (saved["dataset_file"], saved["num_classes"], saved["coco_path"]) == ("coco", 8, custom)
    info = (tmp_path / "info.txt").read_text()
    assert "Epoch: [0] [0/1]" in info and "Test: [1/2]" in info and "num_classes=8" in info
    assert os.path.isfile(tmp_path / "checkpoint.pth")
