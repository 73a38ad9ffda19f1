"""backbone_weights: torchvision weights through torch.hub's cache, a .pth path, or none.

No test reaches the network: torch.hub.download_url_to_file (what load_state_dict_from_url
calls for a file missing from the cache) is replaced by a fake that fails the test, fails like
an offline machine, or writes the file like a machine with network access.
"""
import json
import os
import urllib.error

import pytest
import torch
import torchvision
from PIL import Image

import main
from engine.run import check_from_scratch
from models.common.backbones import build_backbone
from models.common.backbones.weights import BackboneWeightsError
from util.slconfig import ConfigError

from tiny_configs import tiny_args

R18_FILE = "resnet18-f37072fd.pth"  # the file name torchvision's ResNet18_Weights.IMAGENET1K_V1 uses


def random_resnet18_state(seed: int = 0):
    """A torchvision-format resnet18 state_dict with random values (BatchNorm buffers too)."""
    torch.manual_seed(seed)
    state = torchvision.models.resnet18(weights=None).state_dict()
    return {k: torch.rand_like(v.float()).to(v.dtype) if v.is_floating_point() else v for k, v in state.items()}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch.hub cache under TORCH_HOME=tmp_path; downloads fail the test unless a test fakes them."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # get_dir() follows TORCH_HOME only while unset

    def no_network(url, dst, *args, **kwargs):
        pytest.fail(f"the test reached the network: {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    folder = tmp_path / "hub" / "checkpoints"
    return folder


def assert_weights_arrived(backbone, state):
    body = backbone[0].body
    assert torch.equal(body.conv1.weight, state["conv1.weight"])
    assert torch.equal(body.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    # FrozenBatchNorm2d keeps the ImageNet statistics as buffers
    assert torch.equal(body.bn1.running_mean, state["bn1.running_mean"])
    assert torch.equal(body.layer1[0].bn1.weight, state["layer1.0.bn1.weight"])


def test_the_expected_file_name_is_torchvisions():
    url = torchvision.models.get_model_weights("resnet18").IMAGENET1K_V1.url
    assert os.path.basename(url) == R18_FILE


@pytest.mark.parametrize("name", ["IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1"])
def test_cached_torchvision_weights_load_without_network(hub, name):
    hub.mkdir(parents=True)
    state = random_resnet18_state()
    torch.save(state, hub / R18_FILE)
    assert_weights_arrived(build_backbone(tiny_args(backbone_weights=name)), state)


def test_online_downloads_once_into_the_cache(hub, monkeypatch):
    state = random_resnet18_state(1)
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, dst, hash_prefix))
        torch.save(state, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    for _ in range(2):
        assert_weights_arrived(build_backbone(tiny_args(backbone_weights="IMAGENET1K_V1")), state)
    assert len(calls) == 1
    url, dst, hash_prefix = calls[0]
    assert url == "https://download.pytorch.org/models/" + R18_FILE
    assert dst == str(hub / R18_FILE) and hash_prefix == "f37072fd"  # torch checks the download's hash


def test_offline_without_cached_file_is_a_one_line_error(hub, monkeypatch):
    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(BackboneWeightsError) as err:
        build_backbone(tiny_args(backbone_weights="IMAGENET1K_V1"))
    msg = str(err.value)
    assert "\n" not in msg
    assert R18_FILE in msg and str(hub) in msg and "URLError" in msg
    assert f"--options backbone_weights=/path/to/{R18_FILE}" in msg and "put the file there" in msg


def tiny_coco(root):
    """A COCO layout with two 40x40 images (one box each) in train2017/ and val2017/."""
    images = [{"id": i, "file_name": f"{i}.png", "width": 40, "height": 40} for i in (1, 2)]
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 0}
            for i in (1, 2)]
    (root / "annotations").mkdir(parents=True)
    for split in ("train2017", "val2017"):
        (root / split).mkdir()
        for img in images:
            Image.new("RGB", (40, 40), (120, 60, 30)).save(root / split / img["file_name"])
        with open(root / "annotations" / f"instances_{split}.json", "w") as f:
            json.dump({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "box"}]}, f)
    return root


def test_seed_coco_command_offline_is_one_line_before_training(hub, monkeypatch, tmp_path, capsys):
    """The README's COCO command on an offline machine with an empty cache: one line, exit status 2."""
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("offline")))
    rc = main.cli(["-c", "config/DINO/DINO_4scale.py", "--coco_path", str(tiny_coco(tmp_path / "coco")),
                   "--output_dir", str(tmp_path / "out"), "--device", "cpu", "--num_workers", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("main.py: error: backbone_weights='IMAGENET1K_V1' needs resnet50-0676ba61.pth")


@pytest.mark.parametrize("wrapped", [False, True])
def test_path_form_loads_a_state_dict_file(tmp_path, wrapped):
    state = random_resnet18_state(2)
    path = tmp_path / "r18_imagenet.pth"
    torch.save({"model": state} if wrapped else state, path)
    assert_weights_arrived(build_backbone(tiny_args(backbone_weights=str(path))), state)


@pytest.mark.parametrize("spec, match", [
    ("IMAGENET9K_V7", r"neither a file nor a torchvision weights name of resnet18 \(DEFAULT, IMAGENET1K_V1\)"),
    ("ResNet50_Weights.IMAGENET1K_V1", "weights of another model: backbone='resnet18' takes ResNet18_Weights"),
    ("/no/such/r18.pth", "does not exist"),
])
def test_bad_weights_values_are_clear_errors(hub, spec, match):
    with pytest.raises(BackboneWeightsError, match=match):
        build_backbone(tiny_args(backbone_weights=spec))


def test_weights_of_another_depth_are_refused(tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(BackboneWeightsError, match="does not fit the backbone"):
        build_backbone(tiny_args(backbone_weights=str(path)))


@pytest.mark.parametrize("spec", [None, "none", "None"])
def test_none_builds_a_random_backbone_without_the_hub(hub, spec):
    build_backbone(tiny_args(backbone_weights=spec))  # the hub fixture fails the test on a download


def coco_args(tmp_path, *extra, options=()):
    return main.build_args(["-c", "config/DINO/DINO_4scale.py", "--coco_path", str(tmp_path),
                            "--output_dir", str(tmp_path / "out"), *extra, "--options", *options])


@pytest.mark.parametrize("options, named", [
    (["backbone_weights=none"], "backbone_freeze_stem=True and batch_norm_type='FrozenBatchNorm2d'"),
    (["backbone_weights=none", "backbone_freeze_stem=False"], "but batch_norm_type='FrozenBatchNorm2d' keeps"),
    (["backbone_weights=none", "batch_norm_type=BatchNorm2d"], "but backbone_freeze_stem=True keeps"),
    (["backbone_weights=none", "batch_norm_type=BatchNorm2d", "backbone_freeze_stem=False", "lr_backbone=0"],
     "but lr_backbone=0.0 keeps"),
])
def test_training_a_frozen_random_backbone_is_an_error(tmp_path, options, named):
    with pytest.raises(ConfigError, match=named) as err:
        check_from_scratch(coco_args(tmp_path, options=options))
    assert "set backbone_freeze_stem=False and batch_norm_type=BatchNorm2d" in str(err.value)
    assert "backbone_weights=IMAGENET1K_V1" in str(err.value)


def test_from_scratch_is_fine_when_the_stem_trains_or_weights_come_later(tmp_path):
    check_from_scratch(main.build_args([]))  # the synthetic default trains from scratch
    assert main.build_args([]).backbone_weights is None
    trainable = ["backbone_weights=none", "batch_norm_type=BatchNorm2d", "backbone_freeze_stem=False"]
    check_from_scratch(coco_args(tmp_path, options=trainable))
    ckpt = tmp_path / "ckpt.pth"
    ckpt.write_bytes(b"")  # named files must exist; their content is read later
    for extra in (["--eval"], ["--resume", str(ckpt)], ["--pretrain_model_path", str(ckpt)]):
        check_from_scratch(coco_args(tmp_path, *extra, options=["backbone_weights=none"]))


def test_main_refuses_a_frozen_random_backbone_in_one_line(tmp_path, capsys):
    rc = main.cli(["-c", "config/DINO/DINO_4scale.py", "--coco_path", str(tmp_path), "--output_dir",
                   str(tmp_path / "out"), "--options", "backbone_weights=none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("main.py: error: backbone_weights=None starts the resnet50")
