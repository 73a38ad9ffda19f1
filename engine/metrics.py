"""What an evaluation reports, on one scale (AP x 100): output_dir/metrics.json with named fields, the
per-class AP table, and the summary that ends a training run.

metrics.json: {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
"per_class": [{"id", "name", "AP", "AP50", "instances"}, ...], "images", "checkpoint", "config", "mode"
('eval' or 'train'), "epoch" (training), "scale": "AP x 100"}; a number is null where COCO had nothing to
measure (e.g. no small objects). log.txt keeps COCO's 0-1 array `test_coco_eval_bbox` (DINO's format, which
the tools read).
"""
import json
import os
from typing import Dict, List, Optional

from util.disk import atomic_file

PER_CLASS_AUTO = 100  # the per-class table is shown by default up to this many classes (--per_class forces it)


def metrics_record(evaluator, names: Dict[int, str], **context) -> dict:
    """metrics.json's content from a CocoEvaluator that has evaluated; `context` adds checkpoint, config, ..."""
    per_class = [{"id": row["id"], "name": names.get(row["id"]) or f"class {row['id']}", "AP": row["AP"],
                  "AP50": row["AP50"], "instances": row["instances"]} for row in evaluator.per_class()]
    return {**evaluator.named_stats(), "per_class": per_class, "images": len(evaluator.img_ids), "scale": "AP x 100",
            **context}


def write_metrics(path: str, record: dict) -> str:
    """Write `record` as JSON to `path` (util/disk.atomic_file: a full disk is one line, the old file stays);
    returns path."""
    with atomic_file(path, "w") as f:
        json.dump(record, f, indent=1)
    return path


def read_metrics(path: str) -> Optional[dict]:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def wants_per_class(flag: Optional[bool], record: dict) -> bool:
    """--per_class (True), --no_per_class (False), else up to PER_CLASS_AUTO classes."""
    return flag if flag is not None else len(record["per_class"]) <= PER_CLASS_AUTO


def per_class_lines(record: dict) -> List[str]:
    """The per-class table: a header, then one line per class (id, name, AP, AP50, ground-truth boxes)."""
    rows = record["per_class"]
    width = max([len("class")] + [len(r["name"]) for r in rows])

    def num(v):
        return "-" if v is None else f"{v:.1f}"

    lines = [f"{'id':>4}  {'class':<{width}}  {'AP':>5}  {'AP50':>5}  {'boxes':>6}"]
    lines += [f"{r['id']:>4}  {r['name']:<{width}}  {num(r['AP']):>5}  {num(r['AP50']):>5}  {r['instances']:>6}"
              for r in rows]
    return lines
