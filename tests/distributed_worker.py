"""Worker for tests/test_distributed.py, started by torch.distributed.run (one copy per rank).

Usage: python -m torch.distributed.run --nproc_per_node=2 tests/distributed_worker.py REPORT_DIR -- MAIN_ARGS...

Runs main.main(main.build_args(MAIN_ARGS)) unchanged. Training is observed by wrapping
engine.training.train_one_epoch (test-only code, nothing in main.py or engine/ knows about it):
after every epoch, while the process group is still up, each rank hashes its
parameters and the indices of the images it was given, all-gathers both, and writes
REPORT_DIR/rank<R>.json. main.py itself writes nothing extra.
"""
import faulthandler
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import main  # noqa: E402
from engine import training  # noqa: E402
from util import dist as dist_utils  # noqa: E402


def param_digest(model: torch.nn.Module) -> str:
    """sha256 over every parameter's bytes, in name order."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def run(report_dir: str, argv) -> None:
    real_train = training.train_one_epoch
    epochs = []

    def observed(model, criterion, data_loader, *a, **kw):
        seen = [int(i) for i in data_loader.batch_sampler.sampler]  # this epoch's image indices (set_epoch applied)
        stats = real_train(model, criterion, data_loader, *a, **kw)
        mine = {"digest": param_digest(model), "indices": seen}
        epochs.append({"rank": dist_utils.get_rank(), "world_size": dist_utils.get_world_size(),
                       "all": dist_utils.all_gather_object(mine), "loss": stats["loss"]})
        return stats

    training.train_one_epoch = observed
    stats = main.main(main.build_args(argv))
    os.makedirs(report_dir, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    with open(os.path.join(report_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"epochs": epochs, "stats": stats, "dist_after": dist_utils.is_dist()}, f)


# a rank that hangs (e.g. in a collective its peer left) prints every thread's stack and exits
# before test_distributed.py's 240 s timeout, so the failure shows where it waited
HANG_DUMP_S = 200

if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[2] != "--":
        sys.exit("usage: distributed_worker.py REPORT_DIR -- MAIN_ARGS...")
    faulthandler.dump_traceback_later(HANG_DUMP_S, exit=True)
    run(sys.argv[1], sys.argv[3:])
