"""torch.hub entry points: one per released configuration of each detector here (DETR, Deformable DETR, DINO,
AugDETR), each building the model from its config file (config/) and, when asked, loading its weights.

    model = torch.hub.load(REPO, "detr_resnet50", pretrained=True)   # DETR's official file (its URL below)
    model, postprocessor = torch.hub.load(REPO, "dino_resnet50_4scale", pretrained="/ckpt/checkpoint0011_4scale.pth",
                                          return_postprocessor=True)
    torch.hub.list(REPO)                                                # the entry points

REPO is "<owner>/<repo>" on GitHub or a local checkout with source="local". Every entry point takes
pretrained: False (no weights: the model as its config initialises it, without ImageNet weights, nothing
downloaded), True (the official file's URL, where the release has a direct one: DETR's; the others are on
Google Drive or are this project's own files, so pass them), a local file, or a URL (fetched with
torch.hub.load_state_dict_from_url into torch.hub's cache); num_classes (None: the config's, COCO's 91; DETR
adds the no-object class, as its hub does); return_postprocessor; and any config key as a keyword (e.g.
num_select=300). Weights load strictly (official Swin/ConvNeXt DINO files are converted on load); a file
that does not fit raises CheckpointError. The model comes back in eval mode.
"""
import os as _os
import sys as _sys

_sys.path.insert(0, _os.path.dirname(_os.path.abspath(__file__)))  # torch.hub imports this file by path
from tools import hub as _hub  # noqa: E402

dependencies = ["torch", "torchvision", "scipy", "pycocotools"]  # torch.hub checks these are importable

# one function per release whose config is in this checkout (torch.hub.list shows module-level functions)
for _name, _release in _hub.RELEASES.items():
    if _os.path.isfile(_os.path.join(_hub.CONFIG_DIR, _release.config)):
        globals()[_name] = _hub.entry_point(_name, _release)
