"""The models package's public functions: everything main.py, the engine and the tools use.

Detectors register themselves in models/registry.py when their module is imported below; `modelname`
picks one. Nothing outside this package imports a detector's internals.
"""
from typing import Any, Dict, List, Optional, Tuple

from util.config_schema import KeyGroup

from . import detr as _detr  # noqa: F401  registers 'detr'
from . import dino as _dino  # noqa: F401  registers 'dino' (engine/config.py's default detector)
from .common.backbones import official_dino as _official_dino  # noqa: F401  registers its state converter
from .common.schema import model_keys
from .registry import (
    CHECKPOINT_CONFIGS,
    CHECKPOINT_ORIGINS,
    DETECTORS,
    EVAL_RECORDERS,
    STATE_CONVERTERS,
    Detector,
    EvalRecorder,
)

__all__ = ["DETECTORS", "Detector", "EvalRecorder", "all_key_groups", "apply_runtime_config", "build_criterion",
           "build_model", "checkpoint_config", "checkpoint_origin", "convert_state", "detector", "dn_group_count",
           "eval_recorders", "frozen_random_layers", "key_groups", "msda_backend_info", "msda_backends", "refused_keys",
           "select_msda_backend"]


def detector(name: str) -> Detector:
    if name not in DETECTORS:
        raise ValueError(f"modelname={name!r} is not one of {sorted(DETECTORS)}")
    return DETECTORS[name]


def key_groups(modelname: str) -> List[KeyGroup]:
    """The model key groups of detector `modelname`: the common group, then its own."""
    return [model_keys(list(DETECTORS)), *detector(modelname).key_groups]


def all_key_groups() -> List[KeyGroup]:
    """Every model key group of every detector, each once (e.g. to declare their command-line flags)."""
    groups = {g.name: g for name in DETECTORS for g in key_groups(name)}
    return list(groups.values())


def refused_keys(modelname: str) -> Dict[str, str]:
    """Keys of other detectors' groups -> the one-line reason why `modelname` does not take them (a key that
    one of its own groups also declares, e.g. DINO's keys in DDQ-DETR's copy of DINO's group, is its own)."""
    own = {g.name for g in key_groups(modelname)}
    own_keys = {key for g in key_groups(modelname) for key in g.keys}
    reasons = detector(modelname).refused
    out = {}
    # a key declared by several foreign groups (DINO's keys also sit in DDQ-DETR's copy of DINO's group) takes
    # the reason the detector states for one of them over the generic one, whatever the groups' order
    foreign = sorted((g for g in all_key_groups() if g.name not in own), key=lambda g: g.name in reasons)
    for group in foreign:
        why = reasons.get(group.name, f"it is a key of {group.title}, which modelname={modelname!r} does not use")
        out.update({key: f"{key}: {why}" for key in group.keys if key not in own_keys})
    return out


def build_model(args) -> Tuple[Any, Any, Dict[str, Any]]:
    """(model, criterion, postprocessors) of the detector args.modelname, from the checked config `args`."""
    return detector(args.modelname).build(args)


def build_criterion(args):
    """The criterion of detector args.modelname alone (no model is built), e.g. to benchmark a loss."""
    build = detector(args.modelname).build_criterion
    if build is None:
        raise ValueError(f"modelname={args.modelname!r} registers no criterion builder")
    return build(args)


def dn_group_count(dn_number: int, max_gt: int) -> int:
    """DINO's contrastive-denoising groups for a query budget and the most boxes in an image of the batch."""
    from .dino.dn_components import cdn_group_count
    return cdn_group_count(dn_number, max_gt)


def convert_state(state: Dict[str, Any], args: Optional[Any] = None) -> Tuple[Dict[str, Any], List[str]]:
    """A checkpoint's model state in another layout (e.g. an official DINO Swin file) -> this project's, and
    lines saying what was converted (none when it already is this project's)."""
    lines: List[str] = []
    for convert in STATE_CONVERTERS:
        state, done = convert(state, args)
        lines += done
    return state, lines


def checkpoint_config(saved: Dict[str, Any], state: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The config keys that rebuild and reproduce a checkpoint of another codebase (e.g. the earlier AugDETR
    reproduction's) from the args it stores (a dict) and its model state, or None when no converter knows
    it. ValueError when its args and tensors disagree."""
    for derive in CHECKPOINT_CONFIGS:
        config = derive(saved, state)
        if config is not None:
            return config


def checkpoint_origin(state: Dict[str, Any], saved: Optional[Any] = None) -> Optional[Tuple[str, str]]:
    """(what the file is, the config it loads into) for a checkpoint the registered recognisers know (an
    official release without this project's stored config), else None. saved: the checkpoint's 'args'."""
    saved = saved if isinstance(saved, dict) else None
    for origin in CHECKPOINT_ORIGINS:
        found = origin(state, saved)
        if found is not None:
            return found
    return None


def frozen_random_layers(args) -> List[str]:
    """Settings that would keep random backbone layers frozen (backbone_weights none), as key=value texts."""
    from .common.backbones.weights import frozen_random_layers as frozen
    return frozen(args)


def eval_recorders() -> Dict[str, EvalRecorder]:
    """The evaluation recorders options registered, by command-line flag."""
    return dict(EVAL_RECORDERS)


def msda_backends() -> Tuple[str, ...]:
    """The deformable-attention backends MSDA_BACKEND and msda_backend may name."""
    from .dino.ops.backend import BACKENDS
    return tuple(BACKENDS)


def msda_backend_info() -> Dict[str, Dict[str, Any]]:
    """Per device type, the deformable-attention backend in use and why (loads or builds the kernel)."""
    from .dino.ops import backend_info
    return backend_info()


def select_msda_backend(name: Optional[str]) -> None:
    """Apply config key msda_backend for this process: 'auto' leaves the choice to the MSDA_BACKEND
    environment variable (else compiled kernel if it loads); 'compiled' / 'pytorch' force one."""
    from .dino import ops
    ops.set_backend(None if name in (None, "auto") else name)


def apply_runtime_config(args) -> None:
    """Apply the model keys that act on this process rather than on the model (msda_backend, for the
    detectors that have deformable attention)."""
    config = vars(args)
    if "msda_backend" in config:
        select_msda_backend(config["msda_backend"])
