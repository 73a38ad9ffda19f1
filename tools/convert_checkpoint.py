"""Convert an official DINO checkpoint with a Swin or ConvNeXt backbone to this project's layout.

    python tools/convert_checkpoint.py IN.pth OUT.pth [-c CONFIG [--options K=V ...]] [--verify]

Only the backbone's keys change (models.convert_state, which runs the registered converters): DINO's
`backbone.0.<original Swin/ConvNeXt key>` become `backbone.0.body.<timm key>`, the output norms
`backbone.0.norm{k}` stay, recomputed buffers (relative_position_index) are dropped. OUT holds
{'model', 'args' (IN's, when it has them), 'converted_from'}, with this project's integrity digest;
the optimizer state is not carried over. A ResNet DINO checkpoint and an official DETR one
(facebookresearch/detr) need no conversion (this project names their keys alike): they are written
unchanged and the tool says so; --verify then checks they load strictly. ConvNeXt needs the config (-c)
it was trained with, for its backbone and return_interm_indices; --verify builds that config's model
and loads OUT into it with strict=True. main.py --resume / --pretrain_model_path convert on load.
"""
import argparse
import os
import sys
from typing import List, Optional

if __package__ in (None, ""):  # run as `python tools/convert_checkpoint.py`: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools.common import ToolError, tool_args  # noqa: E402


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("input", help="official DINO (or DETR) checkpoint (.pth)")
    p.add_argument("output", help="converted checkpoint to write (.pth)")
    p.add_argument("-c", "--config", default=None,
                   help="config the checkpoint was trained with (needed for ConvNeXt and --verify)")
    p.add_argument("--options", nargs="+", default=[], help="config overrides KEY=VALUE, as main.py")
    p.add_argument("--verify", action="store_true", help="load OUT into the config's model with strict=True")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> List[str]:
    """Convert; returns (and prints) the report lines."""
    from models import convert_state
    from util.checkpoint import load_checkpoint, load_model_state, save_checkpoint

    opts = parse_args(argv)
    if os.path.abspath(opts.input) == os.path.abspath(opts.output):
        raise ToolError(f"OUT {opts.output!r} is IN: write the converted checkpoint to another file")
    if opts.verify and not opts.config:
        raise ToolError("--verify needs -c CONFIG, the config whose model OUT must load into")
    ckpt = load_checkpoint(opts.input)
    args = tool_args(opts.config, opts.options) if opts.config else None
    saved = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    try:  # without -c, the checkpoint's own stored values (backbone, return_interm_indices) guide it
        state, lines = convert_state(ckpt["model"], args if args is not None else argparse.Namespace(**saved))
    except ValueError as err:
        raise ToolError(f"{opts.input}: {err}") from None
    if not lines:
        lines = [f"{opts.input} is not an official DINO Swin/ConvNeXt checkpoint (an official DINO ResNet or DETR "
                 f"one, or already in this project's layout): its model is written unchanged"]
    out = {"model": state, "converted_from": os.path.abspath(opts.input)}
    if saved:
        out["args"] = saved
    save_checkpoint(out, opts.output)
    lines.append(f"wrote {opts.output} ({len(state)} tensors)")
    if opts.verify:
        from models import build_model
        model, _, _ = build_model(args)
        load_model_state(model, state, source=opts.output, strict=True)
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
