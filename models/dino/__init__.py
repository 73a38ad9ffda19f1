"""The deformable-attention family: DINO (dino.py) and the detectors built on its transformer.

Importing this package registers its detectors (models/registry.py) and AugDETR's evaluation recorder.
"""
from . import (
    augdetr,  # noqa: F401  registers --save_emca_weights
    ddq_detr,  # noqa: F401  registers 'ddq_detr'
    dino,  # noqa: F401  registers 'dino'
)
