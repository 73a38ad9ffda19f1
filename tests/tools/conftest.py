"""Shared tiny model, checkpoint and images for the tool tests."""
import json

import pytest
import torch
from PIL import Image

from tools.common import tool_args

from name_keyed_weights import init_by_name
from tiny_configs import RUN, options

CONFIG = "config/DINO/DINO_synthetic.py"
# the shared tiny model (tests/tiny_configs.py) at width 32, as these tests had it: the ONNX check
# compares top-k proposals, and the width-64 random weights have near-tied ones that ONNX orders differently
TINY = options(RUN, hidden_dim=32)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """The tiny model with name-keyed random weights (independent of how the model is built) saved as
    {'model': state_dict} (this project's format)."""
    from models import build_model
    from util.checkpoint import save_checkpoint

    model = init_by_name(build_model(tool_args(CONFIG, TINY))[0])
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    save_checkpoint({"model": model.state_dict(), "epoch": 0}, str(path))
    return str(path)


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    g = torch.Generator().manual_seed(1)
    for i, (w, h) in enumerate([(80, 60), (50, 70)]):
        arr = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(d / f"img{i}.png")
    (d / "notes.txt").write_text("not an image")
    return d


@pytest.fixture
def names_json(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"categories": [{"id": i, "name": f"shape{i}"} for i in range(7)]}))
    return str(path)


@pytest.fixture(scope="session")
def tiny_cfg():
    """(config path, --options list) of the tiny model."""
    return CONFIG, list(TINY)


@pytest.fixture(scope="session")
def stored_config_checkpoint(tmp_path_factory):
    """The tiny model saved as main.py saves it: with 'args' (config_file and every config key)."""
    from models import build_model
    from util.checkpoint import args_to_dict, save_checkpoint

    torch.manual_seed(0)
    args = tool_args(CONFIG, TINY)
    model, _, _ = build_model(args)
    path = tmp_path_factory.mktemp("ckpt") / "with_args.pth"
    save_checkpoint({"model": model.state_dict(), "epoch": 0, "args": args_to_dict(args)}, str(path))
    return str(path)
