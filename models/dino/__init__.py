"""The deformable-attention family: DINO (dino.py) and the detectors built on its transformer (Deformable
DETR, deformable_detr.py).

Importing this package registers its detectors (models/registry.py) and AugDETR's evaluation recorder.
"""
from . import (
    augdetr,  # noqa: F401  registers --save_emca_weights
    ddq_detr,  # noqa: F401  registers 'ddq_detr'
    deformable_detr,  # noqa: F401  registers 'deformable_detr'
    deformable_detr_official,  # noqa: F401  registers the official files' recogniser and converter
    dino,  # noqa: F401  registers 'dino'
)
