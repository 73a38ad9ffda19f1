"""The backbone's initial weights: the config key `backbone_weights`.

Values:
- a torchvision weights name of the backbone's ResNet, e.g. 'IMAGENET1K_V1' (the default of
  DINO_4scale/5scale: for resnet50 that is resnet50-0676ba61.pth, the weights DINO starts from) or
  the full 'ResNet50_Weights.IMAGENET1K_V1'. The file is resolved through torchvision's weights API
  and read from torch.hub's cache, $TORCH_HOME/hub/checkpoints/ (torch.hub.get_dir()); when it is
  not there it is downloaded there once (torch.hub.load_state_dict_from_url). Under DDP only the
  first process of each node downloads; the others wait at a barrier and then read the cache.
- a path to a .pth file with a torchvision ResNet state_dict (or {'model': state_dict});
- None or 'none': random initialisation. Training from scratch must train the stem and the
  BatchNorm layers: `frozen_random_layers` names what would stay random and frozen (the engine
  refuses to train that).
"""
import os
from typing import Dict, List, Optional, Tuple
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from util import dist as dist_utils
from util.slconfig import ConfigError

from .table import backbone_spec

FILE_SUFFIXES = (".pth", ".pt", ".pkl", ".bin", ".ckpt")


class BackboneWeightsError(ConfigError):
    """backbone_weights cannot be resolved or loaded (a ConfigError: main.py prints it as one line)."""


def is_none(spec) -> bool:
    """True for the 'from scratch' values None, '' and 'none' (any case)."""
    return spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "none"))


def parse_spec(spec, backbone: str) -> Tuple[str, Optional[str]]:
    """backbone_weights -> ('none', None) | ('file', path) | ('torchvision', url)."""
    if is_none(spec):
        return "none", None
    if not isinstance(spec, str):
        raise BackboneWeightsError(f"backbone_weights={spec!r} must be a torchvision weights name such as "
                                   f"'IMAGENET1K_V1', a path to a .pth file, or none")
    spec = spec.strip()
    if os.sep in spec or spec.startswith("~") or spec.endswith(FILE_SUFFIXES) or os.path.exists(spec):
        return "file", os.path.expanduser(spec)
    return "torchvision", torchvision_url(spec, backbone)


def torchvision_url(name: str, backbone: str) -> str:
    """URL of torchvision's weights `name` ('IMAGENET1K_V1' or 'ResNet50_Weights.IMAGENET1K_V1') for `backbone`."""
    enum = torchvision.models.get_model_weights(backbone)
    prefix, _, member = name.rpartition(".")
    if prefix and prefix != enum.__name__:
        raise BackboneWeightsError(f"backbone_weights={name!r} are weights of another model: backbone={backbone!r} "
                                   f"takes {enum.__name__}.<name>, one of {sorted(enum.__members__)}")
    if member not in enum.__members__:
        raise BackboneWeightsError(f"backbone_weights={name!r} is neither a file nor a torchvision weights name of "
                                   f"{backbone} ({', '.join(sorted(enum.__members__))}); pass one of those, "
                                   f"a path to a .pth file, or none")
    return enum[member].url


def cache_file(url: str) -> str:
    """Where torch.hub.load_state_dict_from_url keeps `url`: <torch.hub.get_dir()>/checkpoints/<file name>."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))


def _not_cached_error(spec: str, url: str, cause: Optional[BaseException]) -> BackboneWeightsError:
    path = cache_file(url)
    name, folder = os.path.basename(path), os.path.dirname(path)
    why = f"{type(cause).__name__}: {' '.join(str(cause).split())}" if cause else "the node's first process failed"
    return BackboneWeightsError(
        f"backbone_weights={spec!r} needs {name}, which is not in torch.hub's cache {folder} and could not be "
        f"downloaded from {url} ({why}); put the file there (its folder follows $TORCH_HOME), or pass "
        f"--options backbone_weights=/path/to/{name} (or backbone_weights=none when --resume or "
        f"--pretrain_model_path gives every weight)")


def fetch_torchvision_state(spec: str, url: str) -> Dict[str, torch.Tensor]:
    """The state dict at `url` from torch.hub's cache, downloading it there first if needed.

    Under DDP, the first process of each node (local rank 0) reads or downloads the file; every process
    then meets at a barrier (so none waits forever when the download fails) and the others read the cache.
    """
    path = cache_file(url)
    state, error = None, None
    if dist_utils.get_local_rank() == 0:
        try:
            state = torch.hub.load_state_dict_from_url(url, map_location="cpu", check_hash=True,
                                                       weights_only=True)
        except (OSError, RuntimeError) as err:  # URLError/HTTPError/timeouts, or a hash mismatch
            error = err
    dist_utils.barrier()
    if state is None:
        if not os.path.isfile(path):
            raise _not_cached_error(spec, url, error)
        state = read_state_file(path)
    return state


def read_state_file(path: str) -> Dict[str, torch.Tensor]:
    """A ResNet state dict from a .pth file (a bare state_dict or {'model': state_dict})."""
    if not os.path.isfile(path):
        raise BackboneWeightsError(
            f"backbone_weights file {path!r} does not exist: pass the path of a torchvision ResNet .pth, a "
            f"torchvision weights name such as IMAGENET1K_V1, or none to start from random weights")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: any unpickling error
        raise BackboneWeightsError(f"backbone_weights file {path!r} is not a readable torch state dict "
                                   f"({type(err).__name__}); replace it with a torchvision ResNet .pth") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise BackboneWeightsError(f"backbone_weights file {path!r} holds a {type(state).__name__}, not a state dict")
    return state


def backbone_state(spec, backbone: str) -> Optional[Dict[str, torch.Tensor]]:
    """The initial ResNet state dict named by `spec` (see the module docstring); None = from scratch."""
    kind, where = parse_spec(spec, backbone)
    if kind == "none":
        return None
    if kind == "file":
        return read_state_file(where)
    return fetch_torchvision_state(spec, where)


def load_into(resnet: nn.Module, state: Dict[str, torch.Tensor], source: str) -> None:
    """Load a torchvision ResNet state dict into `resnet`; the classifier head (fc.*) is ignored."""
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        missing, unexpected = resnet.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise BackboneWeightsError(f"backbone_weights {source!r} does not fit the backbone "
                                   f"({' '.join(str(err).split())[:300]}); pass weights of the same ResNet") from None
    missing = [k for k in missing if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise BackboneWeightsError(f"backbone_weights {source!r} does not match the backbone: missing {missing[:5]}, "
                                   f"unexpected {unexpected[:5]}; pass weights of the same ResNet depth")


def frozen_random_layers(args) -> List[str]:
    """The settings that keep random backbone layers frozen when backbone_weights is none (the ResNet stem,
    FrozenBatchNorm2d, or the whole backbone), as `key=value` texts; [] when there are no random weights."""
    if not is_none(args.backbone_weights):
        return []
    resnet = backbone_spec(args.backbone).family == "resnet"  # the stem and batch-norm keys concern ResNets only
    return [s for s, bad in (("backbone_freeze_stem=True", resnet and args.backbone_freeze_stem),
                             ("batch_norm_type='FrozenBatchNorm2d'",
                              resnet and args.batch_norm_type == "FrozenBatchNorm2d"),
                             (f"lr_backbone={args.lr_backbone}", args.lr_backbone <= 0)) if bad]
