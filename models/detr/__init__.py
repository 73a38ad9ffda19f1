"""DETR (Carion et al., ECCV 2020): a transformer over one backbone level, learned queries, softmax classes
with a no-object class. Importing this package registers 'detr' (models/registry.py)."""
from . import detr  # noqa: F401  registers 'detr'
