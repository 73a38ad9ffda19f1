"""Command-line parts shared by main.py and the tools: the config (`-c`, `--options` and the config keys
that are also flags, such as AugDETR's `--use_hae`), the device, and the checked config namespace.

The config-key flags come from the key groups (KeyGroup.flags), so neither main.py nor a tool names
them; a flag given wins over `--options` and the file.
"""
import argparse
import os
from typing import Any, Dict, Iterable, Optional, Tuple

import torch

from datasets import category_names
from util.checkpoint import peek_checkpoint, resume_candidates
from util.config_schema import same_value
from util.cpu_threads import THREADS_HELP, ThreadPolicy
from util.cpu_threads import install as install_threads
from util.slconfig import ConfigError, DictAction

from .config import all_groups, flag_keys, is_stored_config, load_config, resolve_stored

DEFAULT_CONFIG = "config/DINO/DINO_synthetic.py"
OPTIONS_HELP = ("override config keys: key=value (int/float/true/false/none/comma list/str); unknown keys and values "
                "outside a key's type or range are errors (see --print_config)")


def add_config_arguments(parser: argparse.ArgumentParser, config_default: Optional[str] = DEFAULT_CONFIG,
                         config_help: Optional[str] = None) -> None:
    """-c/--config_file, --options and one argument group per key group with command-line flags."""
    parser.add_argument("--config_file", "-c", default=config_default,
                        help=config_help or f"Python config file (default {config_default})")
    parser.add_argument("--options", nargs="+", action=DictAction, metavar="KEY=VALUE", help=OPTIONS_HELP)
    for group in all_groups():
        if not group.flags:
            continue
        arguments = parser.add_argument_group(group.title)
        for key, names in group.flags.items():
            spec = group.keys[key]
            help_text = f"{spec.help} (config key {key}; default: the config's)"
            if spec.kind == "bool":
                arguments.add_argument(*names, dest=key, action="store_true", default=None, help=help_text)
            elif spec.choices is not None:
                arguments.add_argument(*names, dest=key, default=None, choices=list(spec.choices), help=help_text)
            else:
                arguments.add_argument(*names, dest=key, type={"int": int, "float": float}.get(spec.kind, str),
                                       default=None, metavar=key.upper(), help=help_text)


def threads_value(text: str) -> str:
    """--threads' argparse type: auto, all or a positive integer (a bad value is a usage error)."""
    if text in ("auto", "all") or (text.isdigit() and int(text) >= 1):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not allowed: give auto, all or a positive integer")


def add_threads_argument(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """--threads (util/cpu_threads.py): auto, all or N."""
    parser.add_argument("--threads", default=default, type=threads_value, metavar="auto|all|N",
                        help=f"{THREADS_HELP} (default {default})")


def start_threads(requested: str, say) -> Tuple[ThreadPolicy, str]:
    """The process's ThreadPolicy, started and installed (the progress loop revisits it), and the line saying
    the count; a bad value is a ConfigError."""
    try:
        policy = ThreadPolicy(requested, say=say)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    line = policy.start()
    install_threads(policy)
    return policy, line


def given_config_flags(args: argparse.Namespace) -> Dict[str, Any]:
    """The config-key flags given on the command line: key -> value."""
    return {key: vars(args)[key] for key in flag_keys() if vars(args).get(key) is not None}


def command_line_names(parser: argparse.ArgumentParser) -> set:
    """Destinations of the parser's options that are not config keys (a config file may not set them)."""
    return {action.dest for action in parser._actions} - set(flag_keys())


def apply_config(args: argparse.Namespace, cfg: Dict[str, Any]) -> argparse.Namespace:
    """Copy the checked config onto the namespace; args.config_keys lists its keys."""
    for key, value in cfg.items():
        setattr(args, key, value)
    args.config_keys = list(cfg)
    return args


def load_args_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """args with their config applied: for --eval / --test without an explicit -c, the config stored in the
    checkpoint they read (eval_weights); otherwise -c (file < --options < config flags). With --coco_path
    and a config that names the synthetic set, switched to the data at coco_path (coco_path_switch). Lines
    to log once the run's logger exists are appended to args.setup_notes; args.config_origin says where the
    config came from (engine/misfit.py words its fix by it)."""
    options, flags, run_only = dict(args.options or {}), given_config_flags(args), command_line_names(parser)
    weights = eval_weights(args) if args.eval and not args.config_given else None
    saved = peek_checkpoint(weights).get("args") if weights and os.path.isfile(weights) else None
    from_checkpoint = is_stored_config(saved)
    if from_checkpoint:
        note = (f"model config: the one stored in {weights} (trained with {saved['config_file']})"
                + given_on_top(saved, options, flags))
        args.config_file = saved["config_file"]
    else:
        note = f"model config: {args.config_file}" + (f" ({weights} stores no config)" if weights else "")

    def resolve(extra: Dict[str, Any]) -> Dict[str, Any]:
        if from_checkpoint:
            return stored_config(saved, weights, dict(options, **extra), flags)
        return load_config(args.config_file, dict(options, **extra), flags, run_only)

    cfg = resolve({})
    switch, data_note = coco_path_switch(args, cfg, options, flags, classes_from_data=not from_checkpoint)
    if switch:
        cfg = resolve(switch)
    for line in ([note] if args.eval else []) + ([data_note] if data_note else []):
        add_setup_note(args, line)
    args.config_origin = {"source": "checkpoint" if from_checkpoint else "file", "options": options,
                          "flags": flags, "evaluation": bool(args.eval)}
    return apply_config(args, cfg)


def eval_weights(args: argparse.Namespace) -> Optional[str]:
    """The checkpoint an --eval / --test run reads, as engine/run.settle_output_dir picks it: --resume, else
    --pretrain_model_path, else the newest checkpoint file in output_dir (None when there is none)."""
    if args.resume or args.pretrain_model_path:
        return args.resume or args.pretrain_model_path
    found = resume_candidates(args.output_dir)
    return found[0] if found else None


def stored_config(saved: Dict[str, Any], source: str, options: Dict[str, Any], flags: Dict[str, Any]
                  ) -> Dict[str, Any]:
    """resolve_stored, with a value that no longer resolves (a file from older code) a ConfigError that asks
    for -c."""
    try:
        return resolve_stored(saved, source, options, flags)
    except ConfigError as err:
        raise ConfigError(f"{err}; pass -c <the config it was trained with> to build the model from a config file "
                          f"instead") from None


def given_on_top(saved: Dict[str, Any], options: Dict[str, Any], flags: Dict[str, Any]) -> str:
    """'; on top of it: k=v (stored w), ...' for the --options and config flags given, '' when none."""
    given = dict(options, **flags)
    if not given:
        return ""
    parts = [f"{k}={v!r}" + (" (as stored)" if k in saved and same_value(v, saved[k]) else
                             f" (stored {saved[k]!r})" if k in saved else "") for k, v in given.items()]
    return "; on top of it: " + ", ".join(parts)


def add_setup_note(args: argparse.Namespace, line: str) -> None:
    """A line main.py logs (console and info.txt) once the run's logger is set up."""
    vars(args).setdefault("setup_notes", []).append(line)


def coco_path_switch(args: argparse.Namespace, cfg: Dict[str, Any], options: Dict[str, Any], flags: Dict[str, Any],
                     classes_from_data: bool) -> Tuple[Dict[str, Any], str]:
    """(--options that make the run read the COCO-format data at --coco_path, the line saying so), or ({}, '')
    when the config already reads coco_path or none was given.

    A config that names the synthetic set (the default one) never silently trains on it when --coco_path is
    given: dataset_file becomes 'coco' and, with `classes_from_data` (a model built from a config file, not
    from a checkpoint) and no num_classes in --options, num_classes and dn_labelbook_size become the data's
    max category id + 1 (labels are raw ids). dataset_file=synthetic asked for on the command line together
    with --coco_path is a ConfigError."""
    if not args.coco_path or cfg["dataset_file"] != "synthetic":
        return {}, ""
    asked = ("--dataset_file synthetic" if flags.get("dataset_file") == "synthetic" else
             "--options dataset_file=synthetic" if options.get("dataset_file") == "synthetic" else None)
    if asked:
        raise ConfigError(f"--coco_path {args.coco_path} and {asked} contradict each other (the synthetic set does "
                          f"not read coco_path): drop {asked} to train on {args.coco_path}, or drop --coco_path")
    switch: Dict[str, Any] = {"dataset_file": "coco"}
    note = (f"--coco_path {args.coco_path}: dataset_file='coco' (the config {args.config_file} names the synthetic "
            f"set)")
    if classes_from_data and "num_classes" not in options:
        split = "test" if args.test else "val" if args.eval else "train"
        ids = sorted(category_names(args.coco_path, split))
        if not ids:
            raise ConfigError(f"--coco_path {args.coco_path}: its {split} annotation file lists no categories; "
                              f"add them ('categories': [{{'id': 1, 'name': ...}}, ...])")
        switch["num_classes"] = ids[-1] + 1
        if "dn_labelbook_size" not in options:
            switch["dn_labelbook_size"] = ids[-1] + 1
        note += (f"; {' and '.join(f'{k}={v}' for k, v in switch.items() if k != 'dataset_file')} from its "
                 f"{len(ids)} categories (max id {ids[-1]} + 1; --options num_classes=N sets another)")
    return switch, note


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' or 'cpu'; ConfigError for a device this machine does not have."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {name}: this machine has no CUDA device (torch.cuda.is_available() is "
                              f"False); use --device cpu")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {name}: this machine has {count} CUDA device(s); use cuda:0..cuda:{count - 1}")
    elif device.type != "cpu":
        raise ConfigError(f"--device {name}: only cpu and cuda devices are supported")
    return name


def option_strings(parser: argparse.ArgumentParser) -> Iterable[str]:
    return [s for action in parser._actions for s in action.option_strings]
