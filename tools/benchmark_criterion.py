"""Per-step cost of the training criterion: DINO's SetCriterion vs AlignDETR's, at DINO-4scale sizes.

    python tools/benchmark_criterion.py [--gt 7] [--batch 2] [--repeats 5] [-c CONFIG]

Random predictions shaped as DINO-4scale's outputs (config/DINO/DINO_4scale.py by default: 900
queries, 91 classes, 6 decoder layers + the encoder proposals, CDN with dn_number 100) and
`--gt` ground-truth boxes per image; one step = criterion forward (matching included) plus the
backward of the weighted total to the predictions. The model is not run: this is the part that
AlignDETR changes. Reports for each criterion the median of interleaved repeats of the whole
step and of the matching alone (all prediction sets), and the AlignDETR / DINO ratios.
"""
import argparse
import os
import statistics
import sys
import time
from typing import Dict, List

import torch

if __package__ in (None, ""):  # run as `python tools/x.py`: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from engine.cli import add_threads_argument  # noqa: E402
from models import build_criterion, dn_group_count  # noqa: E402
from tools.common import TOOL_ERRORS, print_threads, tool_args  # noqa: E402
from util.cli import ArgumentParser, run_guarded  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_set(batch: int, queries: int, classes: int, g: torch.Generator) -> Dict[str, torch.Tensor]:
    """One prediction set: 'pred_logits' (B, Q, K) and 'pred_boxes' (B, Q, 4), leaves with grad."""
    logits = (torch.randn(batch, queries, classes, generator=g) - 4.0).requires_grad_()
    boxes = torch.rand(batch, queries, 4, generator=g).mul(0.8).add(0.1).requires_grad_()
    return {"pred_logits": logits, "pred_boxes": boxes}


def random_outputs(args, batch: int, num_gt: int, seed: int = 0):
    """(outputs, targets, leaves) shaped as DINO's training outputs for the config `args`."""
    g = torch.Generator().manual_seed(seed)
    k, q = args.num_classes, args.num_queries
    out = random_set(batch, q, k, g)
    out["aux_outputs"] = [random_set(batch, q, k, g) for _ in range(args.dec_layers - 1)]
    out["interm_outputs"] = random_set(batch, q, k, g)
    groups = dn_group_count(args.dn_number, num_gt)
    pad = 2 * num_gt * groups
    known = random_set(batch, pad, k, g)
    known["aux_outputs"] = [random_set(batch, pad, k, g) for _ in range(args.dec_layers - 1)]
    out["dn_meta"] = {"pad_size": pad, "num_dn_group": groups, "output_known_lbs_bboxes": known}
    targets = []
    for _ in range(batch):
        centre = torch.rand(num_gt, 2, generator=g) * 0.6 + 0.2
        size = torch.rand(num_gt, 2, generator=g) * 0.3 + 0.05
        targets.append({"labels": torch.randint(1, k, (num_gt,), generator=g), "boxes": torch.cat([centre, size], 1)})
    leaves = [t for s in [out, *out["aux_outputs"], out["interm_outputs"], known, *known["aux_outputs"]]
              for t in (s["pred_logits"], s["pred_boxes"])]
    return out, targets, leaves


def step(criterion, outputs, targets, leaves) -> None:
    """Criterion forward + backward of the weighted total to the predictions."""
    for t in leaves:
        t.grad = None
    losses = criterion(outputs, targets)
    sum(losses[k] * w for k, w in criterion.weight_dict.items()).backward()


def match_all(criterion, outputs, targets) -> None:
    """The matching of every set the criterion matches (the decoder layers and the encoder proposals)."""
    for pset in criterion.matched_sets(outputs):
        criterion.match(pset, targets)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(argv: List[str] = None) -> Dict[str, Dict[str, float]]:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", default=os.path.join(ROOT, "config", "DINO", "DINO_4scale.py"))
    p.add_argument("--gt", type=int, default=7, help="ground-truth boxes per image (COCO's mean is about 7)")
    p.add_argument("--batch", type=int, default=2, help="images per step (DINO: 2 per GPU)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--k", type=int, default=2, help="AlignDETR's k for the proposals and decoder layers 1..L-1")
    add_threads_argument(p, "all")
    a = p.parse_args(argv)
    run_guarded("benchmark_criterion.py", lambda: print_threads(a), TOOL_ERRORS)
    if a.gt < 1 or a.batch < 1 or a.repeats < 1 or a.k < 1:
        p.error("--gt, --batch, --repeats and --k must be >= 1")
    cfg = tool_args(a.config)
    o2m_k = [a.k] * cfg.dec_layers + [1]
    criteria = {name: build_criterion(tool_args(a.config, {"criterion_type": name, "o2m_k": o2m_k}))
                for name in ("dino", "aligndetr")}
    outputs, targets, leaves = random_outputs(cfg, a.batch, a.gt)
    times = {name: {"step": [], "match": []} for name in criteria}
    for name, c in criteria.items():  # warm-up
        c.train()
        step(c, outputs, targets, leaves)
    for _ in range(a.repeats):  # interleaved, so that load changes hit both alike
        for name, c in criteria.items():
            times[name]["step"].append(timed(lambda: step(c, outputs, targets, leaves)))
            times[name]["match"].append(timed(lambda: match_all(c, outputs, targets)))
    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    print(f"criterion step (forward + backward), {cfg.num_queries} queries, {cfg.num_classes} classes, "
          f"{cfg.dec_layers} decoder layers + proposals, batch {a.batch} x {a.gt} boxes, k={a.k}, "
          f"median of {a.repeats}:")
    print("| criterion | step (ms) | matching (ms) |")
    print("|---|---|---|")
    for n, m in med.items():
        print(f"| {n} | {1e3 * m['step']:.1f} | {1e3 * m['match']:.1f} |")
    print(f"aligndetr/dino step ratio: {med['aligndetr']['step'] / med['dino']['step']:.3f}, "
          f"matching ratio: {med['aligndetr']['match'] / med['dino']['match']:.3f}")
    return med


if __name__ == "__main__":
    run()
