"""Config keys: how a key is declared and checked, and how a loaded config becomes the checked dict.

This module knows no key. Each package declares its own keys as a `KeyGroup` next to the code that
reads them (datasets/schema.py, util/optim.py, util/host_memory.py, models/common/schema.py, each
detector family's schema); the engine gathers the groups of the chosen detector into a `Schema`
(engine/config.py). Defaults live only in the config files: each detector names the file that sets
every key it uses (DINO: config/DINO/DINO_4scale.py). `Schema.resolve`:

* every key must be known; a key of another detector's group names that detector; a key an official
  config carries but this project does not implement (`KeyGroup.not_implemented`) is accepted only at
  the official value and then dropped;
* a config that lacks a key takes the value of the detector's defaults file (an official DINO file
  lacks this project's keys);
* every value is coerced to its key's type (an int where a float is expected, an integral float where
  an int is expected) and checked against its range or choices, then the groups' relations between
  keys run; a violation is a one-line ConfigError naming the key, the value and what is allowed.
"""
import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from util.slconfig import ConfigError, SLConfig

_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


@dataclass(frozen=True)
class Key:
    """One config key. kind: 'int' | 'float' | 'bool' | 'str' | 'list[int]' | 'list[float]' |
    'list[str]'; low/high bound numbers (and list items); low_open excludes `low` itself;
    choices lists the allowed values; none_ok allows None; length bounds a list's length.
    model: the key changes the model's tensors (the state_dict's keys or shapes, or what the forward
    computes from them), so a checkpoint trained with another value does not fit."""
    kind: str
    help: str
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    choices: Optional[Tuple] = None
    none_ok: bool = False
    length: Tuple[int, Optional[int]] = (0, None)
    model: bool = False

    def allowed(self) -> str:
        """Human text of what this key accepts, e.g. 'an int >= 1' or 'one of 'a', 'b''."""
        if self.choices is not None:
            names = [repr(c) for c in self.choices]
            if len(names) > 8:  # a long list (backbone): the first names and where all are, to stay one short line
                names = names[:6] + [f"... ({len(names)} names, all in --print_config)"]
            text = "one of " + ", ".join(names)
        else:
            text = {"int": "an int", "float": "a number", "bool": "true or false", "str": "a string"}.get(
                self.kind, f"a list of {self.kind[5:-1]}s")
            bounds = []
            if self.low is not None:
                bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
            if self.high is not None:
                bounds.append(f"<= {self.high:g}")
            if bounds:
                text += (" with items " if self.kind.startswith("list") else " ") + " and ".join(bounds)
        if self.kind.startswith("list") and self.length != (0, None):
            lo, hi = self.length
            text += f" of length {lo}" + ("" if hi == lo else f"..{hi}" if hi else "+")
        return text + (", or none" if self.none_ok else "")

    def check(self, name: str, value: Any) -> Any:
        """The value coerced to this key's type; ConfigError when it is not allowed."""
        if value is None:
            if self.none_ok:
                return None
            raise _bad(name, value, self)
        if self.kind.startswith("list"):
            items = list(value) if isinstance(value, (list, tuple)) else [value]  # `scales=96` -> [96]
            lo, hi = self.length
            if len(items) < lo or (hi is not None and len(items) > hi):
                raise _bad(name, value, self)
            item_key = Key(self.kind[5:-1], self.help, self.low, self.high, self.low_open, self.choices)
            try:
                return [item_key.check(name, v) for v in items]
            except ConfigError:
                raise _bad(name, value, self) from None
        coerced = _coerce(self.kind, value)
        if coerced is _INVALID or (self.choices is not None and coerced not in self.choices):
            raise _bad(name, value, self)
        value = coerced
        if self.kind in ("int", "float"):
            if isinstance(value, float) and not math.isfinite(value):
                raise _bad(name, value, self)
            if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
                raise _bad(name, value, self)
            if self.high is not None and value > self.high:
                raise _bad(name, value, self)
        return value


_INVALID = object()


def _coerce(kind: str, value: Any) -> Any:
    """int <-> float where no information is lost; everything else must already have the type."""
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind == "int" and not isinstance(value, bool):
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return _INVALID
    return value if isinstance(value, _TYPES[kind]) else _INVALID


def _bad(name: str, value: Any, key: Key) -> ConfigError:
    return ConfigError(f"{name}={value!r} is not allowed: {name} must be {key.allowed()}")


# short constructors for the key tables of the packages
def int_key(help, low=None, high=None, **kw) -> Key:
    return Key("int", help, low, high, **kw)


def float_key(help, low=None, high=None, **kw) -> Key:
    return Key("float", help, low, high, **kw)


def bool_key(help, **kw) -> Key:
    return Key("bool", help, **kw)


def choice_key(help, *choices, none_ok=False, **kw) -> Key:
    return Key("str", help, choices=tuple(choices), none_ok=none_ok, **kw)


def prob_key(help, **kw) -> Key:
    return Key("float", help, 0.0, 1.0, **kw)


Relation = Callable[[Dict[str, Any]], Optional[str]]  # resolved config -> error message or None


@dataclass(frozen=True)
class KeyGroup:
    """The keys one part of the project reads. relations: checks between keys (each returns the one-line
    problem, or None), run on the resolved config; derived: functions that then set values derived from
    others (in place, e.g. an alias that replaces a key); not_implemented: keys of an official config
    file that this project does not implement, accepted only at the official value (then dropped);
    flags: keys that are also command-line flags, key -> the flag names (a bool key is a store-true flag)."""
    name: str
    title: str
    keys: Dict[str, Key]
    relations: Tuple[Relation, ...] = ()
    derived: Tuple[Callable[[Dict[str, Any]], None], ...] = ()
    not_implemented: Dict[str, Any] = field(default_factory=dict)
    flags: Dict[str, Tuple[str, ...]] = field(default_factory=dict)


class Schema:
    """The keys of one detector's runs: its groups in order, and the file holding every default.

    foreign: keys of other detectors' groups -> a one-line reason why this detector refuses them."""

    def __init__(self, groups: Sequence[KeyGroup], defaults_file: str, foreign: Optional[Dict[str, str]] = None):
        self.groups = list(groups)
        self.defaults_file = defaults_file
        self.foreign = dict(foreign or {})
        self.keys: Dict[str, Key] = {}
        self.group_of: Dict[str, str] = {}
        self.not_implemented: Dict[str, Any] = {}
        for group in self.groups:
            for name, key in group.keys.items():
                if name in self.keys:
                    raise ValueError(f"config key {name!r} is declared by two groups: {self.group_of[name]} "
                                     f"and {group.name}")
                self.keys[name] = key
                self.group_of[name] = group.name
            self.not_implemented.update(group.not_implemented)

    def model_keys(self) -> List[str]:
        """Keys that change the model's tensors (Key.model), in schema order."""
        return [name for name, key in self.keys.items() if key.model]

    def check_not_implemented(self, name: str, value: Any) -> None:
        """ConfigError unless `value` is the official value of the not-implemented key `name`."""
        expected = self.not_implemented[name]
        if not same_value(value, expected):
            raise ConfigError(f"{name}={value!r} is not implemented here (only the official {name}={expected!r} "
                              f"is accepted); remove it from the config or --options")

    def check_value(self, name: str, value: Any) -> Any:
        """The checked value of one key; ConfigError for an unknown or foreign key."""
        if name in self.not_implemented:
            self.check_not_implemented(name, value)
            return value
        if name in self.foreign:
            raise ConfigError(self.foreign[name])
        if name not in self.keys:
            raise ConfigError(f"{name!r} is unknown; `python main.py --print_config` lists every key")
        return self.keys[name].check(name, value)

    def unknown_option_error(self, name: str) -> ConfigError:
        close = difflib.get_close_matches(name, list(self.keys), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(map(repr, close))}?" if close else "--print_config lists every key"
        return ConfigError(f"unknown config key {name!r} in --options; {hint}")

    def defaults(self) -> Dict[str, Any]:
        """The defaults file's values (cached per file)."""
        if self.defaults_file not in _defaults_cache:
            _defaults_cache[self.defaults_file] = SLConfig.fromfile(self.defaults_file).to_dict()
        return dict(_defaults_cache[self.defaults_file])

    def resolve(self, cfg: Dict[str, Any], source: str) -> Dict[str, Any]:
        """Checked, complete config from a loaded one (see the module docstring); `source` names the
        config file in errors."""
        out = {}
        for name, value in cfg.items():
            try:
                checked = self.check_value(name, value)
            except ConfigError as e:
                raise ConfigError(f"{source}: config key {e}") from None
            if name not in self.not_implemented:
                out[name] = checked
        missing = [k for k in self.keys if k not in out]
        defaults = self.defaults() if missing else {}
        for name in missing:
            if name not in defaults:
                raise ConfigError(f"{self.defaults_file}: key {name!r} has no default; add `{name} = ...` there")
            out[name] = self.keys[name].check(name, defaults[name])
        for group in self.groups:
            for relation in group.relations:
                problem = relation(out)
                if problem:
                    raise ConfigError(f"{source}: {problem}")
        for group in self.groups:
            for derive in group.derived:
                derive(out)
        return {k: out[k] for k in self.keys}  # schema order

    def describe(self, cfg: Dict[str, Any]) -> List[str]:
        """--print_config: per group a heading, then `key = value  # description` lines."""
        width = max(len(f"{k} = {cfg[k]!r}") for k in self.keys)
        lines = []
        for group in self.groups:
            lines.append(f"# ---- {group.title}")
            lines += [f"{f'{k} = {cfg[k]!r}':<{width}}  # {key.help}" for k, key in group.keys.items()]
        return lines

    def differences(self, saved: Dict[str, Any], current: Dict[str, Any]) -> List[Tuple[str, Any, Any]]:
        """(key, saved value, current value) for the model keys whose values differ, in schema order; keys
        the saved config lacks (older files) are not compared."""
        return [(k, saved[k], current[k]) for k in self.model_keys()
                if k in saved and k in current and not same_value(current[k], saved[k])]


_defaults_cache: Dict[str, Dict[str, Any]] = {}


def same_value(value: Any, expected: Any) -> bool:
    """Equal as config values: lists by items, numbers by value (1 == 1.0), bools/None by identity."""
    if isinstance(expected, (list, tuple)):
        return isinstance(value, (list, tuple)) and list(value) == list(expected)
    if expected is None or isinstance(expected, bool):
        return value is expected
    if isinstance(expected, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value == expected
    return value == expected


def load_config(path: str, schema_for: Callable[[str], Schema], options: Optional[Dict[str, Any]] = None,
                flags: Optional[Dict[str, Any]] = None, run_only: Sequence[str] = ()) -> Tuple[Dict[str, Any], Schema]:
    """(checked config, its schema) of file `path` with `--options` (parsed values) and config-key
    command-line flags (`flags`, which win) applied. The schema is that of the detector the result names
    (`modelname`, from the flags, the options, the file or DINO's default); `schema_for` returns it.
    `run_only` names command-line options that are not config keys: setting one in the file or in
    --options is an error saying to pass the flag."""
    raw = SLConfig.fromfile(path).to_dict()
    for key in raw:
        if key in run_only:
            raise ConfigError(f"{path}: key {key!r} is a command-line option only; remove it from the config "
                              f"and pass --{key}")
    options, flags = dict(options or {}), dict(flags or {})
    modelname = flags.get("modelname", options.get("modelname", raw.get("modelname", "dino")))
    schema = schema_for(modelname)
    for key, value in options.items():
        if key in run_only:
            raise ConfigError(f"{key!r} is a command-line option, not a config key: pass --{key} instead of "
                              f"--options {key}=...")
        if key not in schema.keys and key not in schema.not_implemented and key not in schema.foreign:
            raise schema.unknown_option_error(key)
        try:
            raw[key] = schema.check_value(key, value)
        except ConfigError as e:
            raise ConfigError(f"--options {e}") from None
    raw.update(flags)
    return schema.resolve(raw, path), schema
