"""hubconf.py (tools/hub.py): one torch.hub entry point per released configuration whose config is here, the
model built from its config, weights from a local file or through torch.hub.load_state_dict_from_url (tested
with a file:// URL: nothing is downloaded), strict loading and one-line refusals."""
import os

import pytest
import torch

from models import build_model
from tools import hub
from tools.common import tool_args
from util.checkpoint import CheckpointError, save_checkpoint

from detr_reference import write_official_r50
from tiny_configs import RUN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name, **kwargs):
    return torch.hub.load(ROOT, name, source="local", **kwargs)


def entry_points():
    module = torch.hub._import_module("hubconf", os.path.join(ROOT, "hubconf.py"))
    return sorted(f for f in dir(module) if callable(getattr(module, f)) and not f.startswith("_"))


def test_entry_points_are_the_releases_whose_config_is_here():
    expected = sorted(n for n, r in hub.RELEASES.items() if os.path.isfile(os.path.join(hub.CONFIG_DIR, r.config)))
    assert entry_points() == expected
    assert {"detr_resnet50", "detr_resnet50_dc5", "detr_resnet101", "detr_resnet101_dc5", "dino_resnet50_4scale",
            "augdetr_resnet50_4scale"} <= set(expected)


def test_detr_from_a_file_url_and_a_path(tmp_path, monkeypatch):
    """The official-layout R50 file through load_state_dict_from_url (file:// URL, into torch.hub's cache)
    and as a path: every tensor is the file's; with return_postprocessor, DETR's softmax post-processor."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    path = str(tmp_path / "detr_r50.pth")
    state = write_official_r50(path)
    model, post = load("detr_resnet50", pretrained=f"file://{path}", return_postprocessor=True)
    assert not model.training and type(post).__name__ == "SoftmaxPostProcess"
    assert os.path.isfile(tmp_path / "hub" / "checkpoints" / "detr_r50.pth")
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    model = load("detr_resnet50", pretrained=path)
    assert torch.equal(model.query_embed.weight, state["query_embed.weight"])


def test_misfit_file_and_missing_url_are_one_line(tmp_path):
    path = str(tmp_path / "detr_r50.pth")
    write_official_r50(path)
    with pytest.raises(CheckpointError, match="does not fit this model.*class_embed.weight"):
        load("detr_resnet50", pretrained=path, num_classes=5)
    with pytest.raises(ValueError, match="dino_resnet50_4scale: its weights have no direct download URL"):
        load("dino_resnet50_4scale", pretrained=True, **{k: v for k, v in RUN.items() if "data_aug" not in k})


def test_dino_with_config_keys_as_keywords_and_this_projects_file(tmp_path, monkeypatch):
    """Config keys pass as keywords; this project's file (with its integrity digest) loads from a URL too."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    sizes = {k: v for k, v in RUN.items() if "data_aug" not in k and k != "save_checkpoint_interval"}
    model = build_model(tool_args("config/DINO/DINO_4scale.py", [f"{k}={v}" for k, v in sizes.items()]))[0]
    path = str(tmp_path / "dino_tiny.pth")
    save_checkpoint({"model": model.state_dict()}, path)
    loaded = load("dino_resnet50_4scale", pretrained=f"file://{path}", msda_backend="pytorch", **sizes)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert load("detr_resnet50", num_classes=5).class_embed.out_features == 6  # DETR adds the no-object class
