"""The torch.hub entry points' machinery (hubconf.py holds only the entry points, so torch.hub.list shows
nothing else): the released configurations, building a model from its config and loading its weights from a
file or a URL. Arguments and examples: hubconf.py's docstring."""
import argparse
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch

import models
from tools.common import tool_args
from util.checkpoint import INTEGRITY_KEY, load_checkpoint, load_model_state, verify_integrity

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config")
DETR_URL = "https://dl.fbaipublicfiles.com/detr/"


@dataclass(frozen=True)
class Release:
    """A released configuration: its config file (under config/), what it is, and the direct URL of the
    official weights where there is one."""
    config: str
    summary: str
    url: Optional[str] = None


RELEASES = {
    "detr_resnet50": Release("DETR/detr_r50.py", "DETR R50, 500 epochs (42.0 AP)", DETR_URL + "detr-r50-e632da11.pth"),
    "detr_resnet50_dc5": Release("DETR/detr_r50_dc5.py", "DETR-DC5 R50, 500 epochs (43.3 AP)",
                                 DETR_URL + "detr-r50-dc5-f0fb7ef5.pth"),
    "detr_resnet101": Release("DETR/detr_r101.py", "DETR R101, 500 epochs (43.5 AP)",
                              DETR_URL + "detr-r101-2c7b67e5.pth"),
    "detr_resnet101_dc5": Release("DETR/detr_r101_dc5.py", "DETR-DC5 R101, 500 epochs (44.9 AP)",
                                  DETR_URL + "detr-r101-dc5-a2e86def.pth"),
    # Deformable DETR's files are on Google Drive only (r50_deformable_detr-checkpoint.pth, ...): pass the file
    "deformable_detr_resnet50": Release("DeformableDETR/deformable_detr.py",
                                        "Deformable DETR R50 multi-scale, 50 epochs (44.5 AP)"),
    "deformable_detr_resnet50_single_scale": Release("DeformableDETR/deformable_detr_single_scale.py",
                                                     "Deformable DETR R50 single scale, 50 epochs (39.4 AP)"),
    "deformable_detr_resnet50_single_scale_dc5": Release("DeformableDETR/deformable_detr_single_scale_dc5.py",
                                                         "Deformable DETR R50 single scale DC5, 50 epochs (41.5 AP)"),
    "deformable_detr_resnet50_refine": Release("DeformableDETR/deformable_detr_refine.py",
                                               "Deformable DETR R50 + iterative box refinement (46.2 AP)"),
    "deformable_detr_resnet50_two_stage": Release("DeformableDETR/deformable_detr_two_stage.py",
                                                  "Deformable DETR R50 ++ two-stage (46.9 AP)"),
    # DINO's files are on Google Drive (checkpoint0011_4scale.pth, ...); AugDETR's are this project's
    "dino_resnet50_4scale": Release("DINO/DINO_4scale.py", "DINO-4scale R50 (12 epochs: 49.0 AP)"),
    "dino_resnet50_5scale": Release("DINO/DINO_5scale.py", "DINO-5scale R50 (12 epochs: 49.4 AP)"),
    "dino_swin_large_4scale": Release("DINO/DINO_4scale_swin.py", "DINO-4scale Swin-L (official Swin files)"),
    "dino_swin_large_5scale": Release("DINO/DINO_5scale_swin.py", "DINO-5scale Swin-L (official Swin files)"),
    "augdetr_resnet50_4scale": Release("AugDETR/AugDETR_4scale.py", "AugDETR on DINO-4scale R50 (12 epochs)"),
    "augdetr_resnet50_5scale": Release("AugDETR/AugDETR_5scale.py", "AugDETR on DINO-5scale R50"),
}


def build(name: str, pretrained: Union[bool, str] = False, num_classes: Optional[int] = None,
          return_postprocessor: bool = False, **options: Any):
    """The model of RELEASES[name] in eval mode (and its post-processor with return_postprocessor); see the
    docstring of hubconf.py for the arguments."""
    release = RELEASES[name]
    if num_classes is not None:
        options["num_classes"] = num_classes
    args = tool_args(os.path.join(CONFIG_DIR, release.config), options)  # no ImageNet weights
    model, _, postprocessors = models.build_model(args)
    if pretrained is True:
        if release.url is None:
            raise ValueError(f"{name}: its weights have no direct download URL (Google Drive or this project's "
                             f"own file); pass pretrained=PATH or pretrained=URL")
        pretrained = release.url
    if pretrained:
        load_weights(model, args, pretrained, check_hash=pretrained == release.url)
    model.eval()
    return (model, postprocessors["bbox"]) if return_postprocessor else model


def load_weights(model, args: argparse.Namespace, source: str, check_hash: bool = False) -> None:
    """Load a checkpoint (a local file, or a URL fetched with torch.hub.load_state_dict_from_url; check_hash:
    its file name carries the first digits of its SHA-256, as DETR's do) into `model` strictly."""
    if "://" in source:
        # official files pickle an argparse.Namespace under 'args'; nothing else is allowed to unpickle
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.hub.load_state_dict_from_url(source, map_location="cpu", check_hash=check_hash,
                                                      weights_only=True)
        record = ckpt.pop(INTEGRITY_KEY, None)
        if record is not None:  # this project's files carry a digest per tensor
            verify_integrity(ckpt, record, source)
        state = ckpt.get("model", ckpt)
    else:
        state = load_checkpoint(source)["model"]
    state, _ = models.convert_state(state, args)
    load_model_state(model, state, source=source, strict=True)


def entry_point(name: str, release: Release) -> Callable:
    def entry(pretrained: Union[bool, str] = False, num_classes: Optional[int] = None,
              return_postprocessor: bool = False, **options: Any):
        return build(name, pretrained, num_classes, return_postprocessor, **options)
    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (f"{release.summary}: config/{release.config}"
                     + (f"; pretrained=True loads {release.url}" if release.url else "")
                     + ". Arguments: see hubconf.py's docstring.")
    return entry

