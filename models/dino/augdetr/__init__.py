"""AugDETR (ECCV 2024) as parts of the deformable transformer: the Hybrid Attention Encoder's layer
(hae.py) replaces the first encoder layers, Encoder-Mixing Cross-Attention (emca.py) the decoder's
cross-attention. The builders hand them in (parts.py); the keys are in schema.py."""
from . import (
    emca_weights,  # noqa: F401  registers --save_emca_weights
    repro,  # noqa: F401  registers the earlier reproduction's checkpoint converter and config
)
