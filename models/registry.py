"""The detectors this project builds, by name, and the hooks options register.

A detector module registers its builder with `@register_detector(name, ...)`: the builder maps the
checked config (an argparse namespace) onto the model, criterion and post-processors; `key_groups` are
the config key groups it reads besides the common model group (models/common/schema.py);
`defaults_file` is the config file that sets every key it uses. `modelname` chooses the entry.

Options register what the entry points must do for them without naming them there:
* `register_state_converter`: a function that turns a checkpoint of another layout into this
  project's (official DINO Swin files, the earlier AugDETR reproduction's, ...), applied on load and by
  tools/convert_checkpoint.py;
* `register_checkpoint_config`: a function that gives the config reproducing such a checkpoint from the
  args it stores (the AugDETR reproduction's), used by the tools;
* `register_checkpoint_origin`: a function that recognises a checkpoint without this project's stored
  config (an official release) and names the config it loads into, for the one-line error when it does
  not fit the model in use;
* `register_eval_recorder`: something to record during an evaluation, switched on by a command-line
  flag (EMCA's fusion weights: --save_emca_weights).
"""
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from util.config_schema import KeyGroup

# the config files (each detector's defaults_file is one of them)
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config")

Builder = Callable[[Any], Tuple[Any, Any, Dict[str, Any]]]  # args -> (model, criterion, postprocessors)


@dataclass(frozen=True)
class Detector:
    """One registered detector. build_criterion: args -> its criterion alone (optional); refused: key group
    name -> why this detector refuses those keys (e.g. AugDETR's on DETR), for a one-line error instead of
    an unknown key."""
    name: str
    build: Builder
    key_groups: Tuple[KeyGroup, ...]
    defaults_file: str
    summary: str
    build_criterion: Optional[Callable[[Any], Any]] = None
    refused: Dict[str, str] = field(default_factory=dict)


DETECTORS: Dict[str, Detector] = {}


def register_detector(name: str, *, key_groups: Sequence[KeyGroup], defaults_file: str, summary: str,
                      build_criterion: Optional[Callable[[Any], Any]] = None,
                      refused: Optional[Dict[str, str]] = None):
    """Decorator: register the decorated builder under `name`."""
    def wrap(build: Builder) -> Builder:
        if name in DETECTORS:
            raise ValueError(f"detector {name!r} is registered twice")
        DETECTORS[name] = Detector(name, build, tuple(key_groups), defaults_file, summary, build_criterion,
                                   dict(refused or {}))
        return build
    return wrap


# state converters: (state_dict, args or None) -> (state_dict, lines saying what changed); a state it does
# not recognise comes back unchanged with no lines
StateConverter = Callable[[Dict[str, Any], Any], Tuple[Dict[str, Any], List[str]]]
STATE_CONVERTERS: List[StateConverter] = []


def register_state_converter(convert: StateConverter) -> StateConverter:
    STATE_CONVERTERS.append(convert)
    return convert


# checkpoint configs: (the args a checkpoint of another codebase stores, as a dict; its model state, not yet
# converted) -> this project's config keys that rebuild its model and reproduce its outputs (its own args may
# stay in: keys this project does not have are ignored), or None for a checkpoint it does not know
CheckpointConfig = Callable[[Dict[str, Any], Dict[str, Any]], Optional[Dict[str, Any]]]
CHECKPOINT_CONFIGS: List[CheckpointConfig] = []


def register_checkpoint_config(derive: CheckpointConfig) -> CheckpointConfig:
    CHECKPOINT_CONFIGS.append(derive)
    return derive


# checkpoint origins: (model state, its stored args or None) -> (what the file is, e.g. "an official Deformable
# DETR ++ two-stage file", the config it loads into, relative to the repository root) or None
CheckpointOrigin = Callable[[Dict[str, Any], Optional[Dict[str, Any]]], Optional[Tuple[str, str]]]
CHECKPOINT_ORIGINS: List[CheckpointOrigin] = []


def register_checkpoint_origin(origin: CheckpointOrigin) -> CheckpointOrigin:
    CHECKPOINT_ORIGINS.append(origin)
    return origin


@dataclass(frozen=True)
class EvalRecorder:
    """An evaluation-time recording switched on by the command-line flag `--<flag>`.

    make(model, criterion, args) returns an object with update(outputs, targets) and summary() -> dict,
    or raises ValueError with a one-line reason when the model cannot be recorded; the summary is
    written to `output_file` in the evaluation folder; requires(args) says which config it needs
    (checked before anything is built) and returns the one-line problem or None."""
    flag: str
    help: str
    make: Callable[[Any, Any, Any], Any]
    output_file: str
    requires: Callable[[Any], Optional[str]]
    describe: Callable[[Dict[str, Any]], str]


EVAL_RECORDERS: Dict[str, EvalRecorder] = {}


def register_eval_recorder(recorder: EvalRecorder) -> EvalRecorder:
    EVAL_RECORDERS[recorder.flag] = recorder
    return recorder
