"""Plot training loss and COCO AP curves from one or more main.py log.txt files.

    python tools/plot_logs.py logs/run_a/log.txt logs/run_b/log.txt --out curves.png

Each log.txt line is a JSON object; lines with 'epoch' are training epochs
('train_loss', 'test_coco_eval_bbox' = the 12 COCO numbers, AP first). Eval-only
lines (no 'epoch') are ignored. The figure has two panels: train loss and AP per
epoch, one line per log, labelled by the log's folder name.
"""
import argparse
import os
import sys
from typing import Dict, List, Optional

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

if __package__ in (None, ""):  # run as `python tools/x.py`: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from util.cli import ArgumentParser, fail  # noqa: E402
from util.log_records import LogRecordError, read_log_records, training_epochs  # noqa: E402


class LogError(ValueError):
    """An unusable log (one-line message naming the file)."""


def read_log(path: str) -> Dict[str, List[float]]:
    """{'epoch': [...], 'loss': [...], 'ap': [...]} from the epoch lines of one log.txt (NaN where absent).

    Read with util.log_records (as main.py does): a half-written last line is skipped."""
    try:
        records = read_log_records(path)
    except LogRecordError as err:
        raise LogError(str(err)) from None
    series = {"epoch": [], "loss": [], "ap": []}
    for entry in training_epochs(records):
        series["epoch"].append(entry["epoch"])
        series["loss"].append(float(entry.get("train_loss", float("nan"))))
        ap = entry.get("test_coco_eval_bbox")
        series["ap"].append(float(ap[0]) if ap else float("nan"))
    if not series["epoch"]:
        raise LogError(f"{path}: no epoch lines (JSON with 'epoch', 'train_loss', 'test_coco_eval_bbox')")
    return series


def plot(logs: List[str], out: str, labels: Optional[List[str]] = None) -> None:
    if labels and len(labels) != len(logs):
        raise LogError(f"--labels has {len(labels)} names for {len(logs)} logs; give one per log")
    fig, (ax_loss, ax_ap) = plt.subplots(1, 2, figsize=(11, 4))
    for i, path in enumerate(logs):
        s = read_log(path)
        name = labels[i] if labels else os.path.basename(os.path.dirname(os.path.abspath(path)))
        ax_loss.plot(s["epoch"], s["loss"], marker="o", label=name)
        ax_ap.plot(s["epoch"], [100 * v for v in s["ap"]], marker="o", label=name)
    ax_loss.set(xlabel="epoch", ylabel="train loss", title="Training loss")
    ax_ap.set(xlabel="epoch", ylabel="AP (%)", title="COCO bbox AP@[.5:.95]")
    for ax in (ax_loss, ax_ap):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> None:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", nargs="+", metavar="LOG", help="log.txt files written by main.py")
    p.add_argument("--out", required=True, help="output PNG path")
    p.add_argument("--labels", nargs="+", default=None, help="legend names, one per log (default: folder names)")
    opts = p.parse_args(argv)
    try:
        plot(opts.logs, opts.out, opts.labels)
    except LogError as err:
        fail("plot_logs.py", str(err))
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
