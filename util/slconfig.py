"""DINO-style Python config files: flat `key = value` modules with `_base_` inheritance.

A config file is executed (after an `ast` syntax check) and every top-level name
that does not start with `__` and is not a module, function or class becomes a
key. `_base_` (a path or a list of paths, relative to the file) names configs
loaded first; the child's values override theirs, dicts merge recursively unless
the child dict carries `_delete_=True`.

`--options key=value ...` overrides are parsed by `parse_option_value` and
checked against the loaded config by `SLConfig.merge_from_options`: unknown keys
and values of the wrong type are errors, never silently accepted (DINO accepted
any key, which is how its scripts' `dn_scalar=100` was silently ignored).
"""
import argparse
import ast
import copy
import difflib
import os
import types
from typing import Any, Dict, Optional, Tuple

from addict import Dict as _AddictDict
from yapf.yapflib.yapf_api import FormatCode

from util.disk import atomic_file

BASE_KEY = "_base_"
DELETE_KEY = "_delete_"
RESERVED_KEYS = ("filename", "text", "pretty_text", "get", "dump", "merge_from_dict", "merge_from_options")


class ConfigError(ValueError):
    """A bad config file or override; the message is one line naming file/key/value and the fix."""


class ConfigDict(_AddictDict):
    """addict dict with attribute access that raises on a missing key instead of creating it."""

    def __missing__(self, name):
        raise KeyError(name)

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None


def _to_plain(value: Any) -> Any:
    """ConfigDict/dict/list/tuple tree -> plain python containers (for dumping and args)."""
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_to_plain(v) for v in value)
    return value


def _merge(child: dict, base: dict) -> dict:
    """Return base updated by child; nested dicts merge unless child's dict has `_delete_=True`."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict):
            value = dict(value)
            delete = value.pop(DELETE_KEY, False)
            if not delete and isinstance(out.get(key), dict):
                out[key] = _merge(value, out[key])
                continue
            value = _merge(value, {})  # strip nested _delete_ markers
        out[key] = value
    return out


def _exec_config_file(path: str) -> Dict[str, Any]:
    """Execute one .py config file and return its public top-level names (no base merging)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from None
    try:
        tree = ast.parse(text, filename=path)
    except SyntaxError as e:
        raise ConfigError(f"{path}:{e.lineno}: syntax error in config file: {e.msg}") from None
    namespace: Dict[str, Any] = {"__file__": os.path.abspath(path), "__name__": "__config__"}
    try:
        exec(compile(tree, path, "exec"), namespace)
    except Exception as e:  # a config that raises when executed
        raise ConfigError(f"{path}: executing the config file failed: {type(e).__name__}: {e}") from None
    return {
        k: v for k, v in namespace.items()
        if not k.startswith("__") and not isinstance(v, (types.ModuleType, types.FunctionType, type))
    }


def _load_with_bases(path: str, chain: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """Load `path` and, recursively, its `_base_` files; returns the merged plain dict.
    `chain` holds the files that include this one (a file among them is a cycle)."""
    if os.path.abspath(path) in chain:
        cycle = " -> ".join(os.path.basename(p) for p in chain + (os.path.abspath(path),))
        raise ConfigError(f"{chain[-1]}: _base_ inheritance is circular ({cycle}); remove one of the _base_ entries")
    if not path.endswith(".py"):
        raise ConfigError(f"{path}: only .py config files are supported (write `key = value` lines)")
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found")
    own = _exec_config_file(path)
    for key in RESERVED_KEYS:
        if key in own:
            raise ConfigError(f"{path}: key {key!r} is reserved by the config system; rename it")
    bases = own.pop(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, (list, tuple)) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a file name or a list of file names, got {bases!r}")
    merged: Dict[str, Any] = {}
    owner: Dict[str, str] = {}
    for base in bases:
        base_path = os.path.join(os.path.dirname(os.path.abspath(path)), base)
        if not os.path.isfile(base_path):
            raise ConfigError(f"{path}: _base_ file {base!r} not found (looked for {base_path})")
        base_cfg = _load_with_bases(base_path, chain + (os.path.abspath(path),))
        for key in base_cfg:
            if key in merged:
                raise ConfigError(f"{path}: key {key!r} is defined in two _base_ files "
                                  f"({owner[key]} and {base_path}); keep it in one of them")
            owner[key] = base_path
        merged.update(base_cfg)
    return _merge(own, merged)


def parse_option_value(text: str) -> Any:
    """Parse one `--options` value: int, float, bool (any case), none/null, comma list, else str.

    `a=1,2,3` gives [1, 2, 3]; brackets are optional (`[96]` gives [96]); an
    already-typed (non-str) value is returned unchanged.
    """
    if not isinstance(text, str):
        return text
    stripped = text.strip()
    if len(stripped) >= 2 and stripped[0] in "[(" and stripped[-1] in "])":
        inner = stripped[1:-1].strip()
        return [] if not inner else [_parse_scalar(p) for p in inner.split(",")]
    if "," in stripped:
        return [_parse_scalar(p) for p in stripped.split(",") if p.strip() != ""]
    return _parse_scalar(stripped)


def _parse_scalar(text: str) -> Any:
    text = text.strip()
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    return text


def _check_type(key: str, new: Any, current: Any) -> Any:
    """Return `new` coerced to `current`'s type, or raise ConfigError naming key/value/type."""
    if current is None or new is None:
        return new
    if isinstance(current, bool):
        if isinstance(new, bool):
            return new
    elif isinstance(current, int):
        if isinstance(new, int) and not isinstance(new, bool):
            return new
    elif isinstance(current, float):
        if isinstance(new, (int, float)) and not isinstance(new, bool):
            return float(new)  # int -> float promotion (e.g. lr=1)
    elif isinstance(current, (list, tuple)):
        items = list(new) if isinstance(new, (list, tuple)) else [new]  # `scales=96` -> [96]
        kinds = {type(v) for v in current if v is not None}
        if len(kinds) == 1:
            sample = next(v for v in current if v is not None)
            items = [_check_type(key, v, sample) for v in items]
        return type(current)(items)
    elif isinstance(current, dict):
        if isinstance(new, dict):
            return new
    elif isinstance(current, str):
        if isinstance(new, str):
            return new
    else:
        return new
    raise ConfigError(f"option {key}={new!r}: expected {type(current).__name__} "
                      f"(config value is {current!r}), got {type(new).__name__}")


class DictAction(argparse.Action):
    """argparse action for `--options k1=v1 k2=v2,v3`: builds a dict of parsed values."""

    def __call__(self, parser, namespace, values, option_string=None):
        options = dict(getattr(namespace, self.dest, None) or {})
        for item in values:
            if "=" not in item:
                parser.error(f"{option_string} expects key=value pairs, got {item!r}")
            key, value = item.split("=", 1)
            options[key.strip()] = parse_option_value(value)
        setattr(namespace, self.dest, options)


class SLConfig:
    """A loaded config: attribute/item access to keys, merge of overrides, dump to .py."""

    def __init__(self, cfg_dict: Optional[dict] = None, filename: Optional[str] = None):
        object.__setattr__(self, "_cfg_dict", ConfigDict(copy.deepcopy(cfg_dict or {})))
        object.__setattr__(self, "filename", filename)

    @staticmethod
    def fromfile(path: str) -> "SLConfig":
        return SLConfig(_load_with_bases(path), filename=path)

    # -- access ---------------------------------------------------------------
    def __getattr__(self, name):
        return getattr(self._cfg_dict, name)

    def __setattr__(self, name, value):
        self._cfg_dict[name] = value

    def __getitem__(self, name):
        return self._cfg_dict[name]

    def __setitem__(self, name, value):
        self._cfg_dict[name] = value

    def __contains__(self, name):
        return name in self._cfg_dict

    def __iter__(self):
        return iter(self._cfg_dict)

    def __len__(self):
        return len(self._cfg_dict)

    def keys(self):
        return self._cfg_dict.keys()

    def items(self):
        return self._cfg_dict.items()

    def get(self, name, default=None):
        return self._cfg_dict.get(name, default)

    def to_dict(self) -> dict:
        return _to_plain(self._cfg_dict)

    # -- overrides --------------------------------------------------------------
    def merge_from_options(self, options: Dict[str, Any]) -> None:
        """Apply `{dotted.key: value}` overrides (str values are parsed, see parse_option_value).

        Raises ConfigError for a key absent from the config (with close matches)
        or for a value whose type does not fit the config's current value.
        """
        for dotted, raw in (options or {}).items():
            value = parse_option_value(raw)
            parts = dotted.split(".")
            node = self._cfg_dict
            for depth, part in enumerate(parts):
                if not isinstance(node, dict) or part not in node:
                    known = list(node.keys()) if isinstance(node, dict) else []
                    prefix = ".".join(parts[:depth])
                    close = difflib.get_close_matches(part, known, n=3, cutoff=0.6)
                    hint = (f"did you mean {', '.join(repr(('%s.' % prefix if prefix else '') + c) for c in close)}?"
                            if close else "check the spelling against the config file")
                    raise ConfigError(f"unknown config key {dotted!r} in --options "
                                      f"(not in {self.filename or 'the config'}); {hint}")
                if depth == len(parts) - 1:
                    node[part] = _check_type(dotted, value, node[part])
                else:
                    node = node[part]

    def merge_from_dict(self, options: Dict[str, Any]) -> None:
        """Alias of merge_from_options (DINO's name)."""
        self.merge_from_options(options)

    # -- output -----------------------------------------------------------------
    @property
    def pretty_text(self) -> str:
        lines = [f"{key} = {_to_plain(value)!r}" for key, value in self._cfg_dict.items()]
        text = "\n".join(lines) + "\n"
        style = dict(based_on_style="pep8", blank_line_before_nested_class_or_def=True,
                     split_before_expression_after_opening_paren=True)
        formatted, _ = FormatCode(text, style_config=style)  # yapf>=0.40.2 has no `verify`
        return formatted

    def dump(self, path: str) -> None:
        """Write the resolved config (no `_base_`) as a .py file that SLConfig.fromfile can load."""
        header = f"# Resolved config dumped from {self.filename}\n" if self.filename else ""
        with atomic_file(path, "w") as f:  # a full disk: one line naming the file (util/disk.py)
            f.write(header + self.pretty_text)

    def __repr__(self) -> str:
        return f"SLConfig(filename={self.filename!r}, keys={len(self._cfg_dict)})"

