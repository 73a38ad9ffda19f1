"""Model builders. `build_model(args)` is the only place that reads the config namespace."""
from typing import Optional

from .dino.dino import build_dino


def build_model(args):
    """Build (model, criterion, postprocessors) for the config in `args` (see main.build_args)."""
    return build_dino(args)


def select_msda_backend(name: Optional[str]) -> None:
    """Apply config key msda_backend for this process: 'auto' leaves the choice to the MSDA_BACKEND
    environment variable (else compiled kernel if it loads); 'compiled' / 'pytorch' force one."""
    from .dino import ops
    ops.set_backend(None if name in (None, "auto") else name)
