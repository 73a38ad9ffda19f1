"""Helpers shared by the tools: their config arguments and a model built without a dataset on disk.

Every model tool takes the same config arguments as main.py (`-c`, `--options` and the config-key flags
such as `--use_hae`, from engine/cli.py) plus `--device`. `load_tool_model` is what inference.py and
export_onnx.py use: with a checkpoint that stores its config (this project's: ckpt['args'] holds
'config_file' and every config key) `-c` may be left out and the model is built from the stored keys (an
official release the models package recognises, e.g. a Deformable DETR file, uses its config); a
checkpoint that does not fit the model in use is one short line (util.checkpoint.misfit_error, the same
as main.py's) and the full tensor list goes to a file the line names.
"""
import argparse
import os
import tempfile
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch

import models
from engine.cli import add_config_arguments, apply_config, given_config_flags, resolve_device
from engine.config import is_stored_config, load_config, model_keys, resolve_stored
from util import host_memory
from util.checkpoint import CheckpointError, load_checkpoint, load_model_state, misfit_error
from util.slconfig import ConfigError, parse_option_value

Options = Union[None, Sequence[str], Dict[str, Any]]
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ToolError(ValueError):
    """Bad tool input: a one-line message naming the flag or file and the fix."""


def add_model_arguments(parser: argparse.ArgumentParser, config_default: Optional[str] = None,
                        config_help: Optional[str] = None, with_device: bool = True) -> None:
    """-c, --options, the config-key flags (as main.py has them) and --device."""
    add_config_arguments(parser, config_default, config_help or "config file (default: the checkpoint's stored "
                                                                "config, when it has one)")
    if with_device:
        parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")


def config_flags(opts: argparse.Namespace) -> Dict[str, Any]:
    """The config-key flags a tool's parsed arguments carry (e.g. use_hae=True)."""
    return given_config_flags(opts)


def options_dict(options: Options) -> Dict[str, Any]:
    """--options as a dict: given as `key=value` strings (parsed like main.py's) or already a dict."""
    if options is None:
        return {}
    if isinstance(options, dict):
        return dict(options)
    out = {}
    for item in options:
        if "=" not in item:
            raise ConfigError(f"--options expects key=value pairs, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = parse_option_value(value)
    return out


def _namespace(cfg: Dict[str, Any], config_file: str, options: Dict[str, Any], device: str) -> argparse.Namespace:
    args = apply_config(argparse.Namespace(config_file=config_file, options=options, device=resolve_device(device)),
                        cfg)
    models.apply_runtime_config(args)
    host_memory.apply_config(args)  # as main.py runs
    return args


def tool_args(config: str, options: Options = None, device: str = "cpu",
              flags: Optional[Dict[str, Any]] = None) -> argparse.Namespace:
    """The checked config of file `config` (--options and config flags on top) as a namespace with `device`;
    applies the config's msda_backend and, on the CPU, keep_freed_host_memory. A tool's weights come from
    its checkpoint (or do not matter, as in benchmarks), so backbone_weights defaults to none (no ImageNet
    download); an explicit backbone_weights option still wins."""
    opts = dict({"backbone_weights": None}, **options_dict(options))
    return _namespace(load_config(config, opts, flags), config, opts, device)


def build_eval_model(args, checkpoint: Optional[str] = None):
    """(model in eval mode on args.device, postprocessors); weights from `checkpoint` if given (strict)."""
    model, _, postprocessors = models.build_model(args)
    if checkpoint:
        ckpt = load_checkpoint(checkpoint)
        load_model_state(model, ckpt["model"], source=checkpoint, strict=True)
    return model.to(torch.device(args.device)).eval(), postprocessors


def count_parameters(model: torch.nn.Module):
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


def stored_config(ckpt: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The config a checkpoint was trained with (its 'args' dict) when it names its config file and
    holds config keys (this project's checkpoints); None for official DINO or older files."""
    saved = (ckpt or {}).get("args")
    return saved if is_stored_config(saved) else None


def args_from_stored(saved: Dict[str, Any], source: str, options: Options = None, device: str = "cpu",
                     flags: Optional[Dict[str, Any]] = None) -> argparse.Namespace:
    """tool_args for the stored config `saved` (see stored_config): its keys checked (keys it lacks take
    its detector's defaults), then --options and the config flags on top. The stored config_file need
    not exist on this machine."""
    opts = options_dict(options)
    return _namespace(resolve_stored(saved, source, opts, flags), saved["config_file"], opts, device)


def load_tool_model(config: Optional[str], checkpoint: Optional[str], options: Options = None, device: str = "cpu",
                    flags: Optional[Dict[str, Any]] = None, error_file: Optional[str] = None
                    ) -> Tuple[Any, torch.nn.Module, Dict, str]:
    """(args, model in eval mode, postprocessors, a line saying which config built the model).

    config None: the checkpoint's stored config, or for a recognised official release (models.checkpoint_origin)
    the config it loads into (ToolError when it has neither). Weights from
    `checkpoint` (strict). When they do not fit, the full load error is written to error_file and a
    short CheckpointError says which config the checkpoint was trained with and the fix."""
    ckpt = load_checkpoint(checkpoint) if checkpoint else None
    saved = stored_config(ckpt)
    known = models.checkpoint_origin(ckpt["model"], ckpt.get("args")) if ckpt is not None and saved is None else None
    if config is None and known is not None:  # an official release: the config it loads into
        args = tool_args(os.path.join(REPO_ROOT, known[1]), options, device, flags)
        origin = f"model config: {known[1]} ({checkpoint} is {known[0]})"
    elif config is None:
        if checkpoint is None:
            raise ToolError("-c CONFIG is required without --checkpoint")
        if saved is None:
            raise ToolError(f"--checkpoint {checkpoint} stores no config (no 'args' with 'config_file' and config "
                            f"keys, e.g. a weights-only file): pass -c <the config it was trained with>")
        try:
            args = args_from_stored(saved, checkpoint, options, device, flags)
        except ConfigError as err:  # e.g. a file from another codebase whose stored values do not resolve here
            raise ToolError(f"{err}; pass -c <the config it was trained with> to build the model from a config "
                            f"file instead") from None
        origin = f"model config: the one stored in {checkpoint} ({saved['config_file']})"
    else:
        args = tool_args(config, options, device, flags)
        origin = f"model config: {config}"
    model, _, postprocessors = models.build_model(args)
    if ckpt is not None:
        state, _ = models.convert_state(ckpt["model"], args)
        try:
            load_model_state(model, state, source=checkpoint, strict=True)
        except CheckpointError as err:
            raise _misfit(err, checkpoint, saved, config, args, error_file, known) from None
    return args, model.to(torch.device(args.device)).eval(), postprocessors, origin


def _misfit(err: CheckpointError, checkpoint: str, saved: Optional[Dict], config: Optional[str], args,
            error_file: Optional[str], origin: Optional[Tuple[str, str]] = None) -> CheckpointError:
    """The short misfit error; the full load error goes to error_file (default: a temp file). origin: what a
    file without a stored config is and the config it loads into (an official release), if recognised."""
    if error_file is None:
        error_file = os.path.join(tempfile.gettempdir(), os.path.basename(checkpoint) + ".load_error.txt")
    os.makedirs(os.path.dirname(os.path.abspath(error_file)), exist_ok=True)
    with open(error_file, "w") as f:
        f.write(f"{err}\n")
    if saved is None:
        fix = f"pass -c {origin[1]}" if origin else "pass -c <the config it was trained with>"
    elif config is None:
        fix = "drop the --options / flags that change these keys"
    else:
        fix = "leave out -c (the tool then uses the config stored in the checkpoint)" + (
            f" or use -c {saved['config_file']}" if saved["config_file"] != config else "")
    current = dict(vars(args))
    return misfit_error(err, checkpoint, saved, current, model_keys(current), fix=fix, full_list=error_file,
                        origin=origin)
