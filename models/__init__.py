"""Model builders. `build_model(args)` is the only place that reads the config namespace."""
from .dino.dino import build_dino


def build_model(args):
    """Build (model, criterion, postprocessors) for the config in `args` (see main.build_args)."""
    if getattr(args, "modelname", "dino") != "dino":
        raise ValueError(f"unknown modelname {args.modelname!r}: this project builds 'dino' (with optional AugDETR parts)")
    return build_dino(args)
