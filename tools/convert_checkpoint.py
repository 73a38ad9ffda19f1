"""Convert an official checkpoint (DINO with a Swin or ConvNeXt backbone, Deformable DETR) to this project's layout.

    python tools/convert_checkpoint.py IN.pth OUT.pth [-c CONFIG [--options K=V ...]] [--verify]

Only what must change changes (models.convert_state, which runs the registered converters). DINO Swin /
ConvNeXt: the backbone's keys, `backbone.0.<original Swin/ConvNeXt key>` become `backbone.0.body.<timm key>`,
the output norms `backbone.0.norm{k}` stay, recomputed buffers (relative_position_index) are dropped; a
ResNet DINO checkpoint needs nothing. Deformable DETR: its keys are this project's already (the aliased
heads included); the thop profiler counters some files carry (`*.total_ops`, `*.total_params`) are dropped,
as the official loader ignores them. OUT holds {'model', 'args' (IN's, when it has them), 'converted_from'},
with this project's integrity digest; the optimizer state is not carried over. ConvNeXt needs the config
(-c) it was trained with, for its backbone and return_interm_indices; --verify builds that config's model
(without -c: for a recognised official file, e.g. Deformable DETR's, the config it loads into) and loads
OUT into it with strict=True. main.py --resume / --pretrain_model_path convert on load.
"""
import argparse
import os
import sys
from typing import List, Optional

if __package__ in (None, ""):  # run as `python tools/convert_checkpoint.py`: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools.common import REPO_ROOT, ToolError, tool_args  # noqa: E402


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("input", help="official checkpoint (.pth): DINO Swin / ConvNeXt, Deformable DETR")
    p.add_argument("output", help="converted checkpoint to write (.pth)")
    p.add_argument("-c", "--config", default=None,
                   help="config the checkpoint was trained with (needed for ConvNeXt and --verify)")
    p.add_argument("--options", nargs="+", default=[], help="config overrides KEY=VALUE, as main.py")
    p.add_argument("--verify", action="store_true", help="load OUT into the config's model with strict=True (without "
                                                         "-c: the config a recognised official file loads into)")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> List[str]:
    """Convert; returns (and prints) the report lines."""
    from engine.config import model_keys
    from models import checkpoint_origin, convert_state
    from util.checkpoint import CheckpointError, load_checkpoint, load_model_state, misfit_error, save_checkpoint

    opts = parse_args(argv)
    if os.path.abspath(opts.input) == os.path.abspath(opts.output):
        raise ToolError(f"OUT {opts.output!r} is IN: write the converted checkpoint to another file")
    ckpt = load_checkpoint(opts.input)
    origin = checkpoint_origin(ckpt["model"], ckpt.get("args"))
    if opts.verify and not opts.config:
        if origin is None:
            raise ToolError("--verify needs -c CONFIG, the config whose model OUT must load into")
        opts.config = os.path.join(REPO_ROOT, origin[1])
    args = tool_args(opts.config, opts.options) if opts.config else None
    saved = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    try:  # without -c, the checkpoint's own stored values (backbone, return_interm_indices) guide it
        state, lines = convert_state(ckpt["model"], args if args is not None else argparse.Namespace(**saved))
    except ValueError as err:
        raise ToolError(f"{opts.input}: {err}") from None
    if origin is not None:
        lines.insert(0, f"{opts.input} is {origin[0]}: its {len(state)} keys are this project's already (config "
                        f"{origin[1]})")
    elif not lines:
        lines = [f"{opts.input} is not an official DINO Swin/ConvNeXt checkpoint (a ResNet one, or already in this "
                 f"project's layout): its model is written unchanged"]
    out = {"model": state, "converted_from": os.path.abspath(opts.input)}
    if saved:
        out["args"] = saved
    save_checkpoint(out, opts.output)
    lines.append(f"wrote {opts.output} ({len(state)} tensors)")
    if opts.verify:
        from models import build_model
        model, _, _ = build_model(args)
        try:
            load_model_state(model, state, source=opts.output, strict=True)
        except CheckpointError as err:  # one line naming the config it fits; the full list in a file
            error_file = opts.output + ".load_error.txt"
            with open(error_file, "w") as f:
                f.write(f"{err}\n")
            raise misfit_error(err, opts.output, saved, dict(vars(args)), model_keys(dict(vars(args))),
                               full_list=error_file, origin=origin) from None
        lines.append(f"verified: {opts.output} loads with strict=True into the model of {opts.config}")
    for line in lines:
        print(line)
    return lines


if __name__ == "__main__":
    try:
        main()
    except Exception as err:  # one line for the user: ToolError, CheckpointError, ConfigError...
        from util.checkpoint import CheckpointError
        from util.slconfig import ConfigError
        if not isinstance(err, (ToolError, CheckpointError, ConfigError)):
            raise
        sys.exit(f"convert_checkpoint.py: {err}")
