"""Collect COCO results of several runs into one markdown table (the paper's format).

    python tools/collect_results.py logs/table4/*/ [--names DINO +HAE +EMCA AugDETR] [--epoch last|best]
    python tools/collect_results.py dino aug align align_aug --pairs   # + the base/+AugDETR/gain table

Reads each run's log.txt (JSON lines written by main.py) and prints AP, AP50, AP75, APs,
APm, APl (x100) from `test_coco_eval_bbox` of the last (or best) evaluated epoch; a
missing or empty log gives a row that says so instead of numbers.
"""
import argparse
import os
import sys
from typing import List, Optional

if __package__ in (None, ""):  # run as `python tools/x.py`: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from util.cli import ArgumentParser, fail  # noqa: E402
from util.log_records import LogRecordError, read_log_records, training_epochs  # noqa: E402

COLUMNS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


def read_stats(run_dir: str, which: str = "last") -> Optional[dict]:
    """The log line with test_coco_eval_bbox of the last or best (by AP) epoch, or None when the
    run has no log.txt or no evaluated line. Read with util.log_records (as main.py does): a
    half-written last line is skipped, a corrupt line elsewhere is a LogRecordError."""
    path = run_dir if run_dir.endswith(".txt") else os.path.join(run_dir, "log.txt")
    # training epochs only: an --eval line (e.g. a --debug subset) never stands for the run
    rows = [r for r in training_epochs(read_log_records(path, missing_ok=True)) if "test_coco_eval_bbox" in r]
    if not rows:
        return None
    return max(rows, key=lambda r: r["test_coco_eval_bbox"][0]) if which == "best" else rows[-1]


def table(run_dirs: List[str], names: Optional[List[str]] = None, which: str = "last") -> str:
    names = names or [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    lines = ["| run | epoch | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for name, d in zip(names, run_dirs):
        row = read_stats(d, which)
        if row is None:
            lines.append(f"| {name} | - | " + " | ".join(["n/a"] * len(COLUMNS)) + " |")
            continue
        stats = row["test_coco_eval_bbox"][:6]
        epoch = row["epoch"]
        lines.append(f"| {name} | {epoch} | " + " | ".join(f"{100 * v:.1f}" for v in stats) + " |")
    return "\n".join(lines)


def gain_table(run_dirs: List[str], names: Optional[List[str]] = None, which: str = "last") -> str:
    """The paper's main table: runs in (base detector, base detector + AugDETR) pairs -> one row per
    pair with both APs and the gain; a pair with a missing run says n/a."""
    if len(run_dirs) % 2:
        raise ValueError(f"--pairs needs runs in (base, +AugDETR) pairs, got {len(run_dirs)} runs")
    names = names or [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    lines = ["| base detector | AP | +AugDETR | gain |", "|---|---|---|---|"]
    for i in range(0, len(run_dirs), 2):
        base, aug = read_stats(run_dirs[i], which), read_stats(run_dirs[i + 1], which)
        if base is None or aug is None:
            lines.append(f"| {names[i]} | n/a | n/a | n/a |")
            continue
        ap, ap_aug = 100 * base["test_coco_eval_bbox"][0], 100 * aug["test_coco_eval_bbox"][0]
        lines.append(f"| {names[i]} | {ap:.1f} | {ap_aug:.1f} | {ap_aug - ap:+.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run output folders (or log.txt files)")
    p.add_argument("--names", nargs="+", help="row names, one per run (default: folder names)")
    p.add_argument("--epoch", choices=["last", "best"], default="last", help="which evaluated epoch to report")
    p.add_argument("--pairs", action="store_true",
                   help="runs come in (base, base + AugDETR) pairs: also print each pair's AP and gain")
    args = p.parse_args(argv)
    if args.names and len(args.names) != len(args.runs):
        p.error(f"{len(args.names)} --names for {len(args.runs)} runs")
    if args.pairs and len(args.runs) % 2:
        p.error(f"--pairs needs an even number of runs, (base, +AugDETR) pairs; got {len(args.runs)}")
    try:
        print(table(args.runs, args.names, args.epoch))
        if args.pairs:
            print()
            print(gain_table(args.runs, args.names, args.epoch))
    except LogRecordError as err:
        fail("collect_results.py", str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
