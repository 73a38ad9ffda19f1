"""tools/browse_dataset.py: ground truth of a COCO-format folder or the synthetic set, as stored or after the
training transforms (issue 26, item 7)."""
import json

import numpy as np
import pytest
from PIL import Image

from tools import browse_dataset
from util import visualize as draw

from cli_errors import user_error
from coco_layouts import make_custom_layout


@pytest.fixture(scope="module")
def custom(tmp_path_factory):
    return make_custom_layout(tmp_path_factory.mktemp("my_data"), num_train=3, num_val=2)


def _rgb(hex_color):
    return [int(hex_color[i:i + 2], 16) for i in (1, 3, 5)]


def test_a_coco_folder_as_stored(custom, tmp_path, capsys):
    written = browse_dataset.main(["--coco_path", custom, "--output", str(tmp_path), "--num", "5"])
    assert [p.rsplit("/", 1)[1] for p in written] == ["000000000004.png", "000000000005.png", "grid.png"]
    out = capsys.readouterr().out
    assert out.startswith("CPU threads: ") and f"2 image(s) of {custom}/val2017 " in out
    with open(f"{custom}/annotations/instances_val2017.json") as f:
        data = json.load(f)
    first = min(data["images"], key=lambda im: im["id"])
    ann = next(a for a in data["annotations"] if a["image_id"] == first["id"])
    x, y, w, h = ann["bbox"]
    scale = draw.MIN_SIDE / max(first["width"], first["height"])
    px = np.array(Image.open(written[0]))
    # a dash of the class colour on the box's top edge (dashed ground truth)
    top = px[round(y * scale) - 2:round(y * scale) + 3, round(x * scale):round((x + w) * scale)].reshape(-1, 3)
    assert any(p.tolist() == _rgb(draw.class_color(ann["category_id"])) for p in top)


def test_the_synthetic_set_after_the_training_transforms(tmp_path, capsys):
    written = browse_dataset.main(["--output", str(tmp_path), "--num", "2", "--split", "train", "--transforms",
                                   "--options", f"synthetic_dir={tmp_path / 'syn'}", "synthetic_num_train=3",
                                   "synthetic_num_val=1", "synthetic_image_size=96"])
    assert [p.rsplit("/", 1)[1] for p in written] == ["000000000001_train.png", "000000000002_train.png", "grid.png"]
    assert "after the training transforms of config/DINO/DINO_synthetic.py" in capsys.readouterr().out
    again = browse_dataset.main(["--output", str(tmp_path / "again"), "--num", "2", "--split", "train",
                                 "--transforms", "--options", f"synthetic_dir={tmp_path / 'syn'}",
                                 "synthetic_num_train=3", "synthetic_num_val=1", "synthetic_image_size=96"])
    assert (np.array(Image.open(again[0])) == np.array(Image.open(written[0]))).all()  # --seed fixes the draw


def test_bad_input_is_one_line(custom, tmp_path, capsys):
    with user_error(capsys, r"--start 50: .* has 2 images"):
        browse_dataset.main(["--coco_path", custom, "--output", str(tmp_path), "--start", "50"])
    with user_error(capsys, "is not a directory"):
        browse_dataset.main(["--coco_path", str(tmp_path / "none"), "--output", str(tmp_path)])
