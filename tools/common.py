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
from datasets import DataError
from engine.cli import (
    add_config_arguments,
    add_threads_argument,
    apply_config,
    given_config_flags,
    given_on_top,
    resolve_device,
    start_threads,
)
from engine.config import is_stored_config, load_config, resolve_stored
from engine.misfit import misfit_error
from util import host_memory
from util.checkpoint import CheckpointError, load_checkpoint, load_model_state, missing_checkpoint_error
from util.log_records import LogRecordError
from util.slconfig import ConfigError, parse_option_value

Options = Union[None, Sequence[str], Dict[str, Any]]
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ToolError(ValueError):
    """Bad tool input: a one-line message naming the flag or file and the fix."""


# the user's mistakes a tool reports in one line with exit status 2 (util.cli.run_guarded), as main.py does
TOOL_ERRORS = (ToolError, CheckpointError, ConfigError, DataError, LogRecordError)


def add_model_arguments(parser: argparse.ArgumentParser, config_default: Optional[str] = None,
                        config_help: Optional[str] = None, with_device: bool = True, threads: str = "auto") -> None:
    """-c, --options, the config-key flags (as main.py has them), --device and --threads (default `threads`:
    'auto' for the tools that use a model, 'all' for the benchmarks, whose figures are per core count)."""
    add_config_arguments(parser, config_default, config_help or "config file (default: the checkpoint's stored "
                                                                "config, when it has one)")
    if with_device:
        parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    add_threads_argument(parser, threads)


def print_threads(opts: argparse.Namespace) -> None:
    """Set the tool's CPU thread count from its --threads (util/cpu_threads.py) and print the line saying it."""
    print(start_threads(opts.threads, print)[1])


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


def _namespace(cfg: Dict[str, Any], config_file: str, options: Dict[str, Any], device: str,
               origin: Dict[str, Any]) -> argparse.Namespace:
    """The tool's namespace; `origin` is where its config came from (engine/misfit.py words its fix by it)."""
    args = apply_config(argparse.Namespace(config_file=config_file, options=options, device=resolve_device(device),
                                           config_origin=origin), cfg)
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
    origin = {"source": "file", "options": options_dict(options), "flags": dict(flags or {}), "evaluation": True}
    return _namespace(load_config(config, opts, flags), config, opts, device, origin)


def val_size(h: int, w: int, args) -> Tuple[int, int]:
    """(h', w'): the size the config's val transform resizes an h x w image to."""
    from PIL import Image

    from datasets.coco import transforms_from_args
    tensor, _ = transforms_from_args("val", args)(Image.new("RGB", (w, h)), {})
    return tuple(tensor.shape[-2:])


def config_image_size(args) -> Tuple[int, int]:
    """The (h, w) the config evaluates at: its synthetic images (squares of synthetic_image_size) through the
    val transform, or for COCO-format data a wide image's (max(data_aug_scales), data_aug_max_size), e.g.
    176 x 176 for the default config and 800 x 1333 for DINO_4scale.py."""
    if args.dataset_file == "synthetic":
        return val_size(args.synthetic_image_size, args.synthetic_image_size, args)
    return max(args.data_aug_scales), args.data_aug_max_size


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


def reproduced_config(ckpt: Optional[Dict[str, Any]], source: str) -> Optional[Dict[str, Any]]:
    """For a checkpoint of another codebase that a registered converter knows (the earlier AugDETR
    reproduction's: its stored args name its flags), the config that reproduces its outputs here, stored as
    this project stores one (config_file and every key; backbone_weights none, as the checkpoint holds
    the backbone); None for any other checkpoint."""
    saved = (ckpt or {}).get("args")
    saved = vars(saved) if isinstance(saved, argparse.Namespace) else saved
    if not isinstance(saved, dict) or "model" not in ckpt:
        return None
    try:
        derived = models.checkpoint_config(saved, ckpt["model"])
        if derived is None:
            return None
        derived["backbone_weights"] = None
        resolved = resolve_stored(derived, source)
    except (ValueError, ConfigError) as err:
        raise ToolError(f"{source}: {err}") from None
    config_file = derived.get("config_file") or models.detector(resolved["modelname"]).defaults_file
    return dict(resolved, config_file=config_file)


def args_from_stored(saved: Dict[str, Any], source: str, options: Options = None, device: str = "cpu",
                     flags: Optional[Dict[str, Any]] = None) -> argparse.Namespace:
    """tool_args for the stored config `saved` (see stored_config): its keys checked (keys it lacks take
    its detector's defaults), then --options and the config flags on top. The stored config_file need
    not exist on this machine."""
    opts = options_dict(options)
    origin = {"source": "checkpoint", "options": opts, "flags": dict(flags or {}), "evaluation": True}
    return _namespace(resolve_stored(saved, source, opts, flags), saved["config_file"], opts, device, origin)


def load_tool_model(config: Optional[str], checkpoint: Optional[str], options: Options = None, device: str = "cpu",
                    flags: Optional[Dict[str, Any]] = None, error_file: Optional[str] = None
                    ) -> Tuple[Any, torch.nn.Module, Dict, str]:
    """(args, model in eval mode, postprocessors, a line saying which config built the model).

    config None: the checkpoint's stored config, the one reproducing a checkpoint of another codebase that a
    converter knows (reproduced_config), or for a recognised official release (models.checkpoint_origin) the
    config it loads into (ToolError when it has none of them). Weights from
    `checkpoint` (strict). When they do not fit, the full load error is written to error_file and a
    short CheckpointError says which config the checkpoint was trained with and the fix."""
    if checkpoint and not os.path.isfile(checkpoint):
        raise missing_checkpoint_error(checkpoint, "--checkpoint")
    ckpt = load_checkpoint(checkpoint) if checkpoint else None
    # a known codebase's checkpoint first: its stored args look like a config of this project's keys
    saved, origin_of_saved = reproduced_config(ckpt, checkpoint), "the one reproducing"
    if saved is None:
        saved, origin_of_saved = stored_config(ckpt), "the one stored in"
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
        origin = (f"model config: {origin_of_saved} {checkpoint} (trained with {saved['config_file']})"
                  + given_on_top(saved, options_dict(options), dict(flags or {})))
    else:
        args = tool_args(config, options, device, flags)
        origin = f"model config: {config}"
    stored_names = ((ckpt or {}).get("args") or {}).get("class_names") or {}
    args.class_names = {int(k): str(v) for k, v in stored_names.items()}  # main.py stores its data's categories
    model, _, postprocessors = models.build_model(args)
    if ckpt is not None:
        state, _ = models.convert_state(ckpt["model"], args)
        try:
            load_model_state(model, state, source=checkpoint, strict=True)
        except CheckpointError as err:
            raise _misfit(err, checkpoint, ckpt, args, state, model, error_file, known) from None
    return args, model.to(torch.device(args.device)).eval(), postprocessors, origin


def _misfit(err: CheckpointError, checkpoint: str, ckpt: Dict, args, state: Dict, model: torch.nn.Module,
            error_file: Optional[str], release: Optional[Tuple[str, str]] = None) -> CheckpointError:
    """The short misfit error (engine/misfit.py, as main.py's); the full load error goes to error_file
    (default: a temp file). release: what a file without a stored config is and the config it loads into
    (an official release), if recognised."""
    if error_file is None:
        error_file = os.path.join(tempfile.gettempdir(), os.path.basename(checkpoint) + ".load_error.txt")
    os.makedirs(os.path.dirname(os.path.abspath(error_file)), exist_ok=True)
    with open(error_file, "w") as f:
        f.write(f"{err}\n")
    return misfit_error(checkpoint, stored_config(ckpt), args, state, model.state_dict(), full_list=error_file,
                        release=release)
