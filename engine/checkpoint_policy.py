"""Which checkpoint files a training run writes and keeps (config keys of group 'checkpoints').

Every epoch writes output_dir/checkpoint.pth (model, optimizer, scheduler, scaler, EMA, epoch, args: what
a resumed run needs). Besides it:
  * checkpointNNNN.pth at lr drops and every save_checkpoint_interval epochs (DINO's rule); only the newest
    `keep_checkpoints` of them stay (none = all, 0 = none are written);
  * the best epoch's checkpoint_best_regular.pth: `best_checkpoint='weights'` writes the model weights
    only (with epoch and args, which is all --eval, --resume of an evaluation and the tools read), and no
    file at all while the best epoch is the last one (checkpoint.pth holds those weights); 'full' writes
    the whole checkpoint (DINO's); 'none' writes none;
  * `final_checkpoint_optimizer=False` writes the last epoch's checkpoint.pth without the optimizer,
    scheduler and scaler state (with AdamW that state is twice the weights); training on from it restarts
    them.
--debug writes small outputs whatever the config says: no numbered or best files, the last checkpoint.pth
without optimizer state.
"""
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from util.config_schema import KeyGroup, bool_key, choice_key, int_key

CHECKPOINT_KEYS = KeyGroup("checkpoints", "checkpoints", {
    "keep_checkpoints": int_key("numbered checkpointNNNN.pth files kept, the newest N (none = all, 0 = none "
                                "written)", 0, none_ok=True),
    "best_checkpoint": choice_key("checkpoint_best_regular.pth: 'weights' only (not written while the best epoch "
                                  "is the last), the 'full' checkpoint, or 'none'", "weights", "full", "none"),
    "final_checkpoint_optimizer": bool_key("the last epoch's checkpoint.pth keeps optimizer, scheduler and scaler "
                                           "state (False: weights, EMA and args only)"),
})

TRAINING_STATE = ("optimizer", "lr_scheduler", "scaler")  # what a weights-only file leaves out
WEIGHTS = ("model", "epoch", "args")  # what a best file of 'weights' keeps
NUMBERED = re.compile(r"^checkpoint(\d{4})\.pth$")


@dataclass(frozen=True)
class CheckpointPolicy:
    keep: Optional[int]  # numbered files kept (None: all)
    best: str  # 'weights' | 'full' | 'none'
    final_optimizer: bool

    @classmethod
    def of(cls, args) -> "CheckpointPolicy":
        """The run's policy: its config keys, or with --debug the smallest outputs."""
        if args.debug:
            return cls(keep=0, best="none", final_optimizer=False)
        return cls(args.keep_checkpoints, args.best_checkpoint, args.final_checkpoint_optimizer)

    def epoch_files(self, epoch: int, lr_drop: int, interval: int) -> List[str]:
        """The files epoch `epoch` (0-based) writes: checkpoint.pth and, when due, checkpointNNNN.pth."""
        due = (epoch + 1) % lr_drop == 0 or (epoch + 1) % interval == 0
        return ["checkpoint.pth"] + ([f"checkpoint{epoch:04}.pth"] if due and self.keep != 0 else [])

    def content(self, ckpt: Dict[str, Any], final: bool) -> Dict[str, Any]:
        """What a checkpoint.pth / checkpointNNNN.pth holds: all of `ckpt`, or for the last epoch without
        final_optimizer everything but the training state."""
        if final and not self.final_optimizer:
            return {k: v for k, v in ckpt.items() if k not in TRAINING_STATE}
        return ckpt

    def prune(self, output_dir: str) -> List[str]:
        """Delete the numbered checkpoints beyond the newest `keep`; returns their paths."""
        if self.keep is None or not os.path.isdir(output_dir):
            return []
        numbered = sorted(n for n in os.listdir(output_dir) if NUMBERED.match(n))
        old = numbered[:max(0, len(numbered) - self.keep)]
        for name in old:
            os.remove(os.path.join(output_dir, name))
        return [os.path.join(output_dir, n) for n in old]

    def best_content(self, ckpt: Dict[str, Any], is_last: bool) -> Optional[Dict[str, Any]]:
        """What the best file holds when `ckpt`'s epoch is the best so far; None: no file (and a stale one is
        removed), because of 'none' or because it is the last epoch's checkpoint.pth already."""
        if self.best == "none" or (self.best == "weights" and is_last):
            return None
        if self.best == "weights":
            return {k: v for k, v in ckpt.items() if k in WEIGHTS}
        return {k: v for k, v in ckpt.items() if k != "ema_model"}  # DINO's best file


def best_epoch(records: List[dict], key: str = "test_coco_eval_bbox") -> Optional[int]:
    """The epoch of the best AP (first of the 12 COCO numbers) under `key` in log.txt records, or None."""
    scored = [r for r in records if r.get(key) and "epoch" in r]
    return max(scored, key=lambda r: r[key][0])["epoch"] if scored else None


def files_written(output_dir: str) -> List[str]:
    """'name (size MB)' of the checkpoint files in output_dir, for the end-of-training summary."""
    names = sorted(n for n in os.listdir(output_dir) if n.startswith("checkpoint") and n.endswith(".pth"))
    return [f"{n} ({os.path.getsize(os.path.join(output_dir, n)) / 1e6:.0f} MB)" for n in names]
