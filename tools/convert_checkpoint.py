"""Convert a checkpoint of another codebase to this project's layout: official DINO with a Swin or
ConvNeXt backbone, official Deformable DETR and DETR files, or the earlier AugDETR reproduction's
(emirhanbayar/AugDETR).

    python tools/convert_checkpoint.py IN.pth OUT.pth [-c CONFIG [--options K=V ...]] [--verify]

The keys change as the registered converters say (models.convert_state):
* official DINO Swin/ConvNeXt: DINO's `backbone.0.<original Swin/ConvNeXt key>` become
  `backbone.0.body.<timm key>`, the output norms `backbone.0.norm{k}` stay, recomputed buffers
  (relative_position_index) are dropped. A ResNet DINO checkpoint and an official DETR one
  (facebookresearch/detr) need no conversion (this project names their keys alike): they are written
  unchanged and the tool says so. ConvNeXt needs the config (-c) it was trained with, for its backbone
  and return_interm_indices.
* official Deformable DETR: its keys are this project's already (the aliased heads included); the thop
  profiler counters some files carry (`*.total_ops`, `*.total_params`) are dropped, as the official
  loader ignores them; the variant is recognised (models.checkpoint_origin) and names its config.
* the AugDETR reproduction's: its hybrid encoder layers' `*_std` tensors and its decoder layers'
  `encoder_mixing_weights` are renamed. Without -c, OUT stores the config that reproduces its outputs
  (its stored args with use_hae, num_hybrid_layers, use_emca, plus the options its behaviour needs, such
  as emca_gate_input=content), so the tools read OUT without -c; the lines printed give them.
OUT holds {'model', 'args' (that config, or IN's when it is a dict), 'converted_from'}, with this
project's integrity digest; the optimizer state is not carried over. --verify builds the model of -c (or
of the stored config, or of a recognised release's config) and loads OUT into it with strict=True;
a misfit is one line naming the config it fits. main.py --resume / --pretrain_model_path convert on load.
"""
import argparse
import os
import sys
from typing import List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __package__ in (None, ""):  # run as `python tools/convert_checkpoint.py`: make the repository root importable
    sys.path.insert(0, ROOT)
from tools.common import TOOL_ERRORS, ToolError, args_from_stored, reproduced_config, tool_args  # noqa: E402
from util.cli import ArgumentParser, run_guarded  # noqa: E402


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.split("\n")[1], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("input", help="official DINO, Deformable DETR or DETR, or earlier AugDETR reproduction "
                                 "checkpoint (.pth)")
    p.add_argument("output", help="converted checkpoint to write (.pth)")
    p.add_argument("-c", "--config", default=None,
                   help="config the checkpoint was trained with (needed for ConvNeXt, and for --verify unless "
                        "the checkpoint is the reproduction's)")
    p.add_argument("--options", nargs="+", default=[], help="config overrides KEY=VALUE, as main.py")
    p.add_argument("--verify", action="store_true", help="load OUT into the config's model with strict=True (without "
                                                         "-c: the config a recognised official file loads into)")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> List[str]:
    """Convert; returns (and prints) the report lines."""
    from engine.misfit import misfit_error
    from models import build_model, checkpoint_origin, convert_state
    from util.checkpoint import CheckpointError, load_checkpoint, load_model_state, save_checkpoint

    opts = parse_args(argv)
    if os.path.abspath(opts.input) == os.path.abspath(opts.output):
        raise ToolError(f"OUT {opts.output!r} is IN: write the converted checkpoint to another file")
    ckpt = load_checkpoint(opts.input)
    reproduced = None if opts.config else reproduced_config(ckpt, opts.input)
    origin = checkpoint_origin(ckpt["model"], ckpt.get("args")) if reproduced is None else None
    if opts.verify and not opts.config and reproduced is None:
        if origin is None:
            raise ToolError("--verify needs -c CONFIG, the config whose model OUT must load into")
        opts.config = os.path.join(ROOT, origin[1])
    if opts.config:
        args = tool_args(opts.config, opts.options)
    elif reproduced is not None:
        args = args_from_stored(reproduced, opts.input, opts.options)
    else:
        args = None
    saved = ckpt.get("args")
    saved = vars(saved) if isinstance(saved, argparse.Namespace) else saved if isinstance(saved, dict) else {}
    try:  # without a config, the checkpoint's own stored values (backbone, return_interm_indices) guide it
        state, lines = convert_state(ckpt["model"], args if args is not None else argparse.Namespace(**saved))
    except ValueError as err:
        raise ToolError(f"{opts.input}: {err}") from None
    if origin is not None:
        lines.insert(0, f"{opts.input} is {origin[0]}: its {len(state)} keys are this project's already (config "
                        f"{origin[1]})")
    elif not lines:
        lines = [f"{opts.input} is not an official DINO Swin/ConvNeXt checkpoint nor the AugDETR reproduction's "
                 f"(an official DINO ResNet or DETR one, or already in this project's layout): its model is written "
                 f"unchanged"]
    out = {"model": state, "converted_from": os.path.abspath(opts.input)}
    if reproduced is not None:
        out["args"] = dict(reproduced, **{k: getattr(args, k) for k in reproduced if hasattr(args, k)})
        lines.append(f"stored the config that reproduces it ({reproduced['config_file']} with "
                     f"{_changed_keys(reproduced)}): tools read OUT without -c; main.py needs "
                     f"-c {reproduced['config_file']} --options {_changed_keys(reproduced)}")
    elif saved and isinstance(ckpt.get("args"), dict):
        out["args"] = saved
    save_checkpoint(out, opts.output)
    lines.append(f"wrote {opts.output} ({len(state)} tensors)")
    if opts.verify:
        model, _, _ = build_model(args)
        try:
            load_model_state(model, state, source=opts.output, strict=True)
        except CheckpointError as err:  # one line naming the config it fits; the full list in a file
            error_file = opts.output + ".load_error.txt"
            with open(error_file, "w") as f:
                f.write(f"{err}\n")
            raise misfit_error(opts.output, saved, args, state, model.state_dict(), full_list=error_file,
                               release=origin) from None
        lines.append(f"verified: {opts.output} loads with strict=True into the model of "
                     f"{opts.config or 'the stored config'}")
    for line in lines:
        print(line)
    return lines


def _changed_keys(config) -> str:
    """`key=value ...` for the keys of `config` whose values differ from its config file's."""
    from engine.config import load_config
    path = config["config_file"]
    base = load_config(path if os.path.exists(path) else os.path.join(ROOT, path))
    return " ".join(f"{k}={_text(v)}" for k, v in config.items() if k in base and base[k] != v)


def _text(value) -> str:
    return "[" + ",".join(map(str, value)) + "]" if isinstance(value, (list, tuple)) else str(value)


if __name__ == "__main__":
    run_guarded("convert_checkpoint.py", main, TOOL_ERRORS)
