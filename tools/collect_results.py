"""Collect COCO results of several runs into one markdown table (the paper's format).

    python tools/collect_results.py logs/table4/*/ [--names DINO +HAE +EMCA AugDETR] [--epoch last|best]
    python tools/collect_results.py dino aug align align_aug --pairs   # + the base/+AugDETR/gain table
    python tools/collect_results.py out/detr out/ddetr --names DETR "Deformable DETR" --table1   # --eval runs

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

# AugDETR's Table 1 (AP, APs, APm, APl on COCO val2017: the official DETR R50 500-epoch and Deformable DETR
# multi-scale 50-epoch checkpoints, as their READMEs report them); --table1 prints them beside measured rows
TABLE1_COLUMNS = ["AP", "APs", "APm", "APl"]
TABLE1_STATS = [0, 3, 4, 5]  # their places in test_coco_eval_bbox
PAPER_TABLE1 = {"DETR": (500, (42.0, 20.5, 45.8, 61.1)), "Deformable DETR": (50, (44.5, 27.1, 47.6, 59.6))}


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


def read_eval(run_dir: str) -> Optional[dict]:
    """The last --eval line (mode 'eval') of a run's log.txt with test_coco_eval_bbox, or None."""
    path = run_dir if run_dir.endswith(".txt") else os.path.join(run_dir, "log.txt")
    rows = [r for r in read_log_records(path, missing_ok=True)
            if r.get("mode") == "eval" and "test_coco_eval_bbox" in r]
    return rows[-1] if rows else None


def table1(run_dirs: List[str], names: List[str]) -> str:
    """AugDETR's Table 1: per --eval run, AP / APs / APm / APl (x100) and the images per batch it was
    evaluated with (padding moves DETR's AP), beside the paper's numbers for the rows it has (DETR,
    Deformable DETR); a run without an --eval line says n/a."""
    head = " | ".join(TABLE1_COLUMNS)
    lines = [f"| method | eval images/batch | {head} | paper: epochs | {head} |", "|---|---|" + "---|" * 9]
    for name, d in zip(names, run_dirs):
        row = read_eval(d)
        # COCO's -1 means the split has no objects of that size: '-'
        stats = [] if row is None else [row["test_coco_eval_bbox"][i] for i in TABLE1_STATS]
        measured = [f"{100 * v:.1f}" if v >= 0 else "-" for v in stats] or ["n/a"] * 4
        batch = "-" if row is None else str(row.get("val_batch_size", "?"))
        epochs, paper = PAPER_TABLE1.get(name, ("-", ("-",) * 4))
        lines.append(f"| {name} | {batch} | " + " | ".join(measured) + f" | {epochs} | "
                     + " | ".join(str(v) for v in paper) + " |")
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
    p.add_argument("--table1", action="store_true",
                   help="AugDETR's Table 1 instead: each run's last --eval line (AP, APs, APm, APl) beside the "
                        "paper's numbers for the rows named 'DETR' and 'Deformable DETR' (scripts/table1.sh)")
    args = p.parse_args(argv)
    if args.names and len(args.names) != len(args.runs):
        p.error(f"{len(args.names)} --names for {len(args.runs)} runs")
    if args.pairs and len(args.runs) % 2:
        p.error(f"--pairs needs an even number of runs, (base, +AugDETR) pairs; got {len(args.runs)}")
    try:
        if args.table1:
            print(table1(args.runs, args.names or [os.path.basename(os.path.normpath(d)) for d in args.runs]))
            return 0
        print(table(args.runs, args.names, args.epoch))
        if args.pairs:
            print()
            print(gain_table(args.runs, args.names, args.epoch))
    except LogRecordError as err:
        fail("collect_results.py", str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
