"""How a detector is trained and evaluated, for main.py and the tools.

loops.py: one training epoch, one evaluation pass, prediction; config.py: the run's config keys
gathered from the packages; cli.py: the command-line parts main.py and the tools share; run.py: a run's
setup (folder, data, model, optimizer, resumed weights, the folder's lock); training.py: the epoch loop,
mid-epoch checkpoints and preemption stops, --eval, --test; resume_state.py: the position a mid-epoch
checkpoint records and when one is due.
"""
from .loops import (
    DEBUG_ITERATIONS,
    NonFiniteLossError,
    ResourceError,
    evaluate,
    predict,
    total_loss,
    train_one_epoch,
    write_coco_results,
)

__all__ = ["DEBUG_ITERATIONS", "NonFiniteLossError", "ResourceError", "evaluate", "predict", "total_loss",
           "train_one_epoch", "write_coco_results"]
