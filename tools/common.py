"""Helpers shared by the tools: build args/model from a config without a dataset on disk.

`load_tool_model` is what inference.py and export_onnx.py use: with a checkpoint that stores its
config (this project's: ckpt['args'] holds 'config_file' and every config key) `-c` may be left
out and the model is built from the stored keys; a checkpoint that does not fit the model in use
is one short line (util.checkpoint.misfit_error, the same as main.py's) and the full tensor list
goes to a file the line names.
"""
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch


class ToolError(ValueError):
    """Bad tool input: a one-line message naming the flag or file and the fix."""


def tool_args(config: str, options: Optional[Sequence[str]] = None, use_hae: bool = False,
              use_emca: bool = False, device: str = "cpu", extra: Sequence[str] = ()):
    """main.build_args for a model-only tool (no dataset is read); applies the config's msda_backend
    and, on the CPU, keep_freed_host_memory."""
    import main

    argv: List[str] = ["-c", config, "--device", device, *extra]
    if use_hae:
        argv.append("--use_hae")
    if use_emca:
        argv.append("--use_emca")
    # a tool's weights come from its checkpoint (or are irrelevant, benchmarks): no ImageNet download;
    # the user's options come after, so an explicit backbone_weights still wins
    argv += ["--options", "backbone_weights=none", *(options or [])]
    args = main.build_args(argv)
    from models import select_msda_backend
    from util import host_memory
    select_msda_backend(args.msda_backend)
    host_memory.apply_config(args)  # as main.py runs
    return args


def build_eval_model(args, checkpoint: Optional[str] = None):
    """(model in eval mode on args.device, postprocessors); weights from `checkpoint` if given (strict)."""
    from models import build_model
    from util.checkpoint import load_checkpoint, load_model_state

    model, _, postprocessors = build_model(args)
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
    from util.config_schema import SCHEMA

    saved = (ckpt or {}).get("args")
    if isinstance(saved, dict) and "config_file" in saved and any(k in saved for k in SCHEMA):
        return saved
    return None


def args_from_stored(saved: Dict[str, Any], source: str, options: Optional[Sequence[str]] = None,
                     use_hae: bool = False, use_emca: bool = False, device: str = "cpu"):
    """tool_args for the stored config `saved` (see stored_config): its config keys checked with
    resolve_config (keys it lacks take DINO_4scale.py's values), then --options and the flags on top.
    The stored config_file need not exist on this machine."""
    from models import select_msda_backend
    from util.config_schema import DEFAULTS_FILE, SCHEMA, resolve_config

    # the run flags and the --options syntax/types are checked by main.build_args on the defaults file
    args = tool_args(DEFAULTS_FILE, options, use_hae, use_emca, device)
    raw = {k: v for k, v in saved.items() if k in SCHEMA}
    raw.update(args.options or {})
    raw.update({k: True for k, on in (("use_hae", use_hae), ("use_emca", use_emca)) if on})
    cfg = resolve_config(raw, f"{source} (its stored config)")
    if cfg["dn_scalar"] is not None:
        cfg["dn_number"] = cfg["dn_scalar"]  # as util.config_schema.load_config does
    for key, value in cfg.items():
        setattr(args, key, value)
    args.config_file = saved["config_file"]
    select_msda_backend(args.msda_backend)
    return args


def load_tool_model(config: Optional[str], checkpoint: Optional[str], options: Optional[Sequence[str]] = None,
                    use_hae: bool = False, use_emca: bool = False, device: str = "cpu",
                    error_file: Optional[str] = None) -> Tuple[Any, torch.nn.Module, Dict, str]:
    """(args, model in eval mode, postprocessors, a line saying which config built the model).

    config None: the checkpoint's stored config (ToolError when it has none). Weights from
    `checkpoint` (strict). When they do not fit, the full load error is written to error_file and a
    short CheckpointError says which config the checkpoint was trained with and the fix."""
    from models import build_model
    from util.checkpoint import CheckpointError, load_checkpoint, load_model_state, misfit_error

    ckpt = load_checkpoint(checkpoint) if checkpoint else None
    saved = stored_config(ckpt)
    if config is None:
        if checkpoint is None:
            raise ToolError("-c CONFIG is required without --checkpoint")
        if saved is None:
            raise ToolError(f"--checkpoint {checkpoint} stores no config (no 'args' with 'config_file' and config "
                            f"keys, e.g. a weights-only file): pass -c <the config it was trained with>")
        from util.slconfig import ConfigError
        try:
            args = args_from_stored(saved, checkpoint, options, use_hae, use_emca, device)
        except ConfigError as err:  # e.g. a file from another codebase whose stored values do not resolve here
            raise ToolError(f"{err}; pass -c <the config it was trained with> to build the model from a config "
                            f"file instead") from None
        origin = f"model config: the one stored in {checkpoint} ({saved['config_file']})"
    else:
        args = tool_args(config, options, use_hae, use_emca, device)
        origin = f"model config: {config}"
    model, _, postprocessors = build_model(args)
    if ckpt is not None:
        try:
            load_model_state(model, ckpt["model"], source=checkpoint, strict=True)
        except CheckpointError as err:
            if error_file is None:
                import tempfile
                error_file = os.path.join(tempfile.gettempdir(), os.path.basename(checkpoint) + ".load_error.txt")
            os.makedirs(os.path.dirname(os.path.abspath(error_file)), exist_ok=True)
            with open(error_file, "w") as f:
                f.write(f"{err}\n")
            if saved is None:
                fix = "pass -c <the config it was trained with>"
            elif config is None:
                fix = "drop the --options / flags that change these keys"
            else:
                fix = "leave out -c (the tool then uses the config stored in the checkpoint)" + (
                    f" or use -c {saved['config_file']}" if saved["config_file"] != config else "")
            raise misfit_error(err, checkpoint, saved, vars(args), fix=fix,
                               full_list=error_file) from None
    return args, model.to(torch.device(args.device)).eval(), postprocessors, origin
