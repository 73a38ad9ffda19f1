"""The config of a run: the key groups of its detector gathered into one schema, then loaded and checked.

Groups: data (datasets/schema.py), optimisation (util/optim.py), checkpoints (engine/checkpoint_policy.py),
runtime (util/host_memory.py), mid-epoch checkpoints (engine/resume_state.py), distributed runs (util/dist.py),
the output folder's lock (util/run_lock.py), and the model groups of the chosen detector (models.key_groups).
How a key is checked: util/config_schema.py.
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import models
from datasets.schema import DATA_KEYS
from util.config_schema import Key, KeyGroup, Schema
from util.config_schema import load_config as _load_config
from util.dist import DISTRIBUTED_KEYS
from util.host_memory import RUNTIME_KEYS
from util.optim import OPTIMISATION_KEYS
from util.run_lock import RUN_LOCK_KEYS
from util.slconfig import ConfigError

from .checkpoint_policy import CHECKPOINT_KEYS
from .resume_state import MID_EPOCH_KEYS

COMMON_GROUPS: Tuple[KeyGroup, ...] = (DATA_KEYS, OPTIMISATION_KEYS, CHECKPOINT_KEYS, RUNTIME_KEYS, MID_EPOCH_KEYS,
                                       DISTRIBUTED_KEYS, RUN_LOCK_KEYS)
DEFAULT_DETECTOR = "dino"


def schema_for(modelname: str) -> Schema:
    """The schema of detector `modelname`: the common groups, then its model groups."""
    if modelname not in models.DETECTORS:
        raise ConfigError(f"modelname={modelname!r} is not allowed: modelname must be one of "
                          f"{', '.join(map(repr, models.DETECTORS))}")
    detector = models.detector(modelname)
    return Schema([*COMMON_GROUPS, *models.key_groups(modelname)], detector.defaults_file,
                  foreign=models.refused_keys(modelname))


def default_schema() -> Schema:
    return schema_for(DEFAULT_DETECTOR)


def all_groups() -> List[KeyGroup]:
    """Every key group of every detector, each once."""
    return [*COMMON_GROUPS, *models.all_key_groups()]


def flag_keys() -> Dict[str, Tuple[Tuple[str, ...], Key]]:
    """Config keys that are also command-line flags: key -> (flag names, Key)."""
    return {key: (names, group.keys[key]) for group in all_groups() for key, names in group.flags.items()}


def load_config(path: str, options: Optional[Dict[str, Any]] = None, flags: Optional[Dict[str, Any]] = None,
                run_only: Sequence[str] = ()) -> Dict[str, Any]:
    """The checked config of file `path`, `--options` on top, config-key flags on top of those."""
    return _load_config(path, schema_for, options, flags, run_only)[0]


def resolve_stored(saved: Dict[str, Any], source: str, options: Optional[Dict[str, Any]] = None,
                   flags: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The checked config a checkpoint stores (its 'args'), `--options` and config flags on top; keys the
    stored config lacks (an older file) take its detector's defaults."""
    schema = schema_for((flags or {}).get("modelname", (options or {}).get("modelname",
                                                                           saved.get("modelname", DEFAULT_DETECTOR))))
    raw = {k: v for k, v in saved.items() if k in schema.keys}
    for key, value in (options or {}).items():
        if key not in schema.keys and key not in schema.not_implemented and key not in schema.foreign:
            raise schema.unknown_option_error(key)
        try:
            raw[key] = schema.check_value(key, value)
        except ConfigError as e:
            raise ConfigError(f"--options {e}") from None
    raw.update(flags or {})
    return schema.resolve(raw, f"{source} (its stored config)")


def is_stored_config(saved: Any) -> bool:
    """True when a checkpoint's 'args' is a config of this project: it names its config file and holds
    config keys (official DINO and older files do not)."""
    if not isinstance(saved, dict) or "config_file" not in saved:
        return False
    return any(key in saved for group in all_groups() for key in group.keys)


def describe(cfg: Dict[str, Any]) -> List[str]:
    """--print_config lines of a resolved config, grouped."""
    return schema_for(cfg["modelname"]).describe(cfg)


def model_keys(cfg: Dict[str, Any]) -> List[str]:
    """The keys of this config's detector that change the model's tensors."""
    return schema_for(cfg["modelname"]).model_keys()
