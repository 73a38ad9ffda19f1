"""COCO box evaluation that keeps detections compact and evaluates once at the end.

Detections are kept per image as one float32 (K, 6) array ``[x, y, w, h, score, label]``
(COCO xywh, absolute pixels of the stored image), gathered across ranks, and handed to
pycocotools (or faster-coco-eval, same API and numbers) in a single ``loadRes`` call.
pycocotools' prints are captured. What is shown and written uses one scale, AP x 100 (as papers and
detectron2 print it): ``named_stats`` (the 12 numbers by name), ``per_class`` (AP and AP50 per category) and
the summary ``summarize`` logs; ``stats`` keeps COCO's own 0-1 numbers (log.txt's test_coco_eval_bbox, DINO's
format).

    python -m datasets.coco_eval --compare DIR   # time both backends on DIR's val split
"""
import contextlib
import io
import logging
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torchvision.ops import box_convert

from util import dist as dist_utils
from util.cli import ArgumentParser
from util.logger import FILE_ONLY, LOGGER_NAME

BACKENDS = ("pycocotools", "faster_coco_eval")
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def percent(value: float) -> Optional[float]:
    """A COCO number (0-1, -1 = nothing to measure) as AP x 100 rounded to 0.01, None for -1."""
    return None if value < 0 else round(100.0 * float(value), 2)


def metrics_lines(named: Dict[str, Optional[float]]) -> List[str]:
    """['AP 52.1  AP50 64.0 ... APl 55.4', 'AR1 40.1 ... ARl 60.2'] (x100; '-' where there was nothing to
    measure): precision and recall, one line each."""
    def line(names):
        return "  ".join(f"{k} {'-' if named.get(k) is None else f'{named[k]:.1f}'}" for k in names)
    return [line(METRIC_NAMES[:6]), line(METRIC_NAMES[6:])]


class DetectionStore:
    """Detections per image as compact (K, 6) arrays, gathered across ranks (no evaluation:
    what COCO test-dev, which has no public ground truth, needs)."""

    def __init__(self):
        self.detections: Dict[int, np.ndarray] = {}

    @property
    def img_ids(self) -> List[int]:
        return sorted(self.detections)

    def update(self, predictions: Dict[int, Dict[str, torch.Tensor]]) -> None:
        """predictions: image_id -> {'boxes' (K, 4) xyxy absolute, 'scores' (K,), 'labels' (K,)}.

        A repeated image id (e.g. a padded distributed sampler) replaces the earlier entry.
        """
        for image_id, pred in predictions.items():
            boxes = torch.as_tensor(pred["boxes"]).detach().float().cpu().reshape(-1, 4)
            scores = torch.as_tensor(pred["scores"]).detach().float().cpu().reshape(-1, 1)
            labels = torch.as_tensor(pred["labels"]).detach().float().cpu().reshape(-1, 1)
            if not (len(boxes) == len(scores) == len(labels)):
                raise ValueError(f"{type(self).__name__}.update: image {image_id} has {len(boxes)} boxes, "
                                 f"{len(scores)} scores and {len(labels)} labels; they must match")
            xywh = box_convert(boxes, "xyxy", "xywh")
            self.detections[int(image_id)] = torch.cat([xywh, scores, labels], dim=1).numpy()

    def synchronize_between_processes(self) -> None:
        """Merge every rank's detections (all_gather_object); no-op without torch.distributed."""
        if dist_utils.get_world_size() == 1:
            return
        parts: List[Dict[int, np.ndarray]] = dist_utils.all_gather_object(self.detections)
        merged: Dict[int, np.ndarray] = {}
        for part in parts:
            merged.update(part)
        self.detections = merged


class CocoEvaluator(DetectionStore):
    """Accumulates detections and computes the 12 COCO box stats.

    coco_gt: pycocotools COCO ground truth (crowd boxes included, as COCO requires).
    Only images passed to :meth:`update` are evaluated (lets a partial val run make sense).
    """

    def __init__(self, coco_gt, iou_types: Sequence[str] = ("bbox",), backend: str = "pycocotools",
                 use_cats: bool = True):
        super().__init__()
        unsupported = [t for t in iou_types if t != "bbox"]
        if unsupported:
            raise ValueError(f"CocoEvaluator: iou type {unsupported[0]!r} is not supported; only 'bbox'")
        if backend not in BACKENDS:
            raise ValueError(f"CocoEvaluator: unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
        self.coco_gt = coco_gt
        self.iou_types = list(iou_types)
        self.backend = backend
        self.use_cats = bool(use_cats)
        self.coco_eval: Dict[str, object] = {}
        self._summary: Dict[str, str] = {}

    def _as_coco_array(self) -> np.ndarray:
        """(N, 7) float64 ``[image_id, x, y, w, h, score, label]``: the array form loadRes accepts."""
        rows = [np.concatenate([np.full((len(d), 1), img_id, dtype=np.float64), d.astype(np.float64)], axis=1)
                for img_id, d in self.detections.items() if len(d)]
        return np.concatenate(rows) if rows else np.zeros((0, 7))

    def accumulate(self) -> None:
        """Run the evaluation once over everything gathered (quietly)."""
        unknown = set(self.detections) - set(self.coco_gt.getImgIds())
        if unknown:
            raise ValueError(f"CocoEvaluator: image id {min(unknown)} is not in the ground truth; "
                             "evaluate with the COCO api of the same dataset")
        dets = self._as_coco_array()
        for iou_type in self.iou_types:
            lines: List[str] = []
            with contextlib.redirect_stdout(io.StringIO()) as captured:
                ev = self._make_eval(dets, iou_type, lines.append)
                ev.params.imgIds = self.img_ids
                ev.params.useCats = int(self.use_cats)
                ev.evaluate()
                ev.accumulate()
                mark = captured.tell()
                lines.clear()  # keep only the summary table from print_function backends
                ev.summarize()
                table = captured.getvalue()[mark:]
            self._summary[iou_type] = table + "\n".join(lines)
            self.coco_eval[iou_type] = ev

    def _make_eval(self, dets: np.ndarray, iou_type: str, sink):
        if self.backend == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval
            gt = self.coco_gt
            dt = gt.loadRes(dets) if len(dets) else _empty_results(COCO, gt.dataset)
            return COCOeval(gt, dt, iou_type)
        from faster_coco_eval import COCO, COCOeval_faster
        if getattr(self, "_faster_gt", None) is None:  # converted once, reused by later calls
            self._faster_gt = COCO(self.coco_gt.dataset)
        gt = self._faster_gt
        dt = gt.loadRes(dets) if len(dets) else _empty_results(COCO, gt.dataset)
        return COCOeval_faster(gt, dt, iou_type, print_function=sink)

    def summarize(self) -> None:
        """Log the 12 COCO numbers of each iou type as AP x 100 (accumulating first if needed); pycocotools'
        own 0-1 table goes to info.txt only."""
        if not self.coco_eval:
            self.accumulate()
        log = logging.getLogger(LOGGER_NAME)
        for iou_type in self.iou_types:
            precision, recall = metrics_lines(self.named_stats(iou_type))
            log.info("COCO %s on %d images (x 100): %s", iou_type, len(self.img_ids), precision)
            log.info("COCO %s recall (x 100): %s", iou_type, recall)
            log.info("pycocotools' summary (0-1 scale):\n%s", self._summary[iou_type].rstrip("\n"),
                     extra={FILE_ONLY: True})

    def named_stats(self, iou_type: str = "bbox") -> Dict[str, Optional[float]]:
        """The 12 COCO numbers by name (METRIC_NAMES), x 100; None where there was nothing to measure."""
        return {name: percent(v) for name, v in zip(METRIC_NAMES, self.stats(iou_type))}

    def per_class(self, iou_type: str = "bbox") -> List[Dict]:
        """Per category of the evaluation: {'id', 'AP' (IoU .50:.95), 'AP50', 'instances' (non-crowd ground-truth
        boxes in the evaluated images)}, AP x 100 over all areas at 100 detections; AP None without ground truth."""
        if iou_type not in self.coco_eval:
            self.accumulate()
        ev = self.coco_eval[iou_type]
        precision = np.asarray(ev.eval["precision"])  # (iou thresholds, recall points, classes, areas, max dets)
        iou50 = int(np.argmin(np.abs(np.asarray(ev.params.iouThrs) - 0.5)))
        rows = []
        for k, cat in enumerate(ev.params.catIds):
            p = precision[:, :, k, 0, -1]
            anns = self.coco_gt.loadAnns(self.coco_gt.getAnnIds(imgIds=self.img_ids, catIds=[int(cat)]))
            rows.append({"id": int(cat), "AP": percent(p[p > -1].mean()) if (p > -1).any() else None,
                         "AP50": percent(p[iou50][p[iou50] > -1].mean()) if (p[iou50] > -1).any() else None,
                         "instances": sum(1 for a in anns if not a.get("iscrowd", 0))})
        return rows

    def stats(self, iou_type: str = "bbox") -> List[float]:
        """The 12 COCO numbers (AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl)."""
        if iou_type not in self.coco_eval:
            self.accumulate()
        return [float(x) for x in self.coco_eval[iou_type].stats[:12]]


def _empty_results(coco_cls, gt_dataset: Dict):
    """A results COCO object with no detections (loadRes cannot take an empty list)."""
    res = coco_cls()
    res.dataset = {"images": list(gt_dataset["images"]), "categories": list(gt_dataset["categories"]),
                   "annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        res.createIndex()
    return res


def fake_detections(coco_gt, num_dets: int = 100, seed: int = 0) -> Dict[int, Dict[str, torch.Tensor]]:
    """Jittered GT boxes plus random false positives, ``num_dets`` per image (for timing)."""
    g = torch.Generator().manual_seed(seed)
    cat_ids = torch.tensor(sorted(coco_gt.getCatIds()), dtype=torch.float32)
    out = {}
    for img_id in sorted(coco_gt.getImgIds()):
        info = coco_gt.imgs[img_id]
        anns = coco_gt.imgToAnns.get(img_id, [])
        gt = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        gt = box_convert(gt, "xywh", "xyxy") + torch.randn(len(gt), 4, generator=g) * 2
        labels = torch.tensor([a["category_id"] for a in anns], dtype=torch.float32)
        n_fp = max(0, num_dets - len(gt))
        wh = torch.tensor([info["width"], info["height"]] * 2, dtype=torch.float32)
        corners = torch.rand(n_fp, 4, generator=g) * wh
        low, high = corners[:, :2], corners[:, 2:]
        fp = torch.cat([torch.minimum(low, high), torch.maximum(low, high)], 1)
        fp_labels = cat_ids[torch.randint(len(cat_ids), (n_fp,), generator=g)]
        scores = torch.cat([0.5 + 0.5 * torch.rand(len(gt), generator=g), 0.6 * torch.rand(n_fp, generator=g)])
        out[img_id] = {"boxes": torch.cat([gt, fp]), "scores": scores, "labels": torch.cat([labels, fp_labels])}
    return out


def compare_backends(root: str, num_dets: int = 100, repeats: int = 3) -> Dict[str, float]:
    """Best-of-``repeats`` wall time of each backend on ``root``'s val split; prints a comparison."""
    from pycocotools.coco import COCO

    from datasets.coco import load_coco_json

    ann_file = os.path.join(root, "annotations", "instances_val2017.json")
    gt = COCO()
    gt.dataset = load_coco_json(ann_file)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    dets = fake_detections(gt, num_dets)
    times, stats = {}, {}
    for backend in BACKENDS:
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            ev = CocoEvaluator(gt, backend=backend)
            ev.update(dets)
            ev.accumulate()
            stats[backend] = ev.stats()
            best = min(best, time.perf_counter() - t0)
        times[backend] = best
    n_img, n_det = len(dets), sum(len(d["scores"]) for d in dets.values())
    same = np.allclose(stats["pycocotools"], stats["faster_coco_eval"], atol=1e-9)
    print(f"{ann_file}: {n_img} images, {n_det} detections, best of {repeats}")
    for backend in BACKENDS:
        print(f"  {backend:17s} {times[backend]:.3f} s  AP={stats[backend][0]:.4f}")
    print(f"  speed-up faster_coco_eval vs pycocotools: {times['pycocotools'] / times['faster_coco_eval']:.2f}x; "
          f"identical stats: {same}")
    return times


def main(argv: Optional[List[str]] = None) -> None:
    p = ArgumentParser(description="COCO evaluation helpers.")
    p.add_argument("--compare", metavar="DIR", required=True,
                   help="COCO-layout folder: time pycocotools vs faster_coco_eval on its val split")
    p.add_argument("--num-dets", type=int, default=100, help="detections per image (default 100)")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    compare_backends(a.compare, a.num_dets, a.repeats)


if __name__ == "__main__":
    main()
