"""One training epoch and one evaluation pass (DINO's train_one_epoch / evaluate), and prediction."""
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from util import dist as dist_utils
from util.disk import atomic_file
from util.logger import LOGGER_NAME, MetricLogger, SmoothedValue

DEBUG_ITERATIONS = 15  # --debug: stop each loop after this many iterations (DINO's value)


class NonFiniteLossError(RuntimeError):
    """A NaN/inf training loss; the message names epoch, iteration and every loss term."""


class ResourceError(RuntimeError):
    """Out of (GPU) memory in a train or eval step; the message names the batch and what to lower."""


def _oom_error(err: BaseException, where: str, samples) -> ResourceError:
    b, _, h, w = samples.tensors.shape
    size_fix = ("--options val_batch_size=1" if where.startswith("evaluation") else "--options batch_size=1")
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ResourceError(f"out of memory during {where} with batch size {b} and padded image size {h}x{w} "
                         f"({first}); try --amp, {size_fix}, or smaller data_aug_scales / data_aug_max_size")


def _batch_to(samples, targets, device: torch.device, skipped: set):
    """Move a batch to `device`, adding to `skipped` the image ids the dataset skipped
    (skip_bad_images) to produce it."""
    skipped.update(int(i) for t in targets for i in t.get("skipped_image_ids", ()))
    return samples.to(device), targets_to(targets, device)


def _count_across_ranks(ids: set) -> int:
    merged = set()
    for part in dist_utils.all_gather_object(ids):
        merged |= part
    return len(merged)


def autocast(device: torch.device, enabled: bool):
    """AMP context: bf16 on CPU, fp16 on CUDA (fp16 needs the GradScaler the caller creates)."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


def targets_to(targets: Iterable[Dict], device: torch.device) -> List[Dict]:
    return [{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in t.items()} for t in targets]


def total_loss(loss_dict: Dict[str, torch.Tensor], weight_dict: Dict[str, float]
               ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """DINO's training objective: (sum of weight_dict[k] * loss_dict[k], the weighted terms).

    Only terms named in weight_dict count; the others (e.g. class_error) are logged, not
    trained. Terms are summed in loss_dict order (Python sum from 0, as DINO does), so the
    total is bitwise the same wherever it is computed: forward, rank-reduced logs, tools.
    """
    weighted = {k: v * weight_dict[k] for k, v in loss_dict.items() if k in weight_dict}
    return sum(weighted.values()), weighted


def _logged_losses(reduced: Dict[str, torch.Tensor], weight_dict: Dict[str, float]) -> Dict[str, float]:
    """Meter values of rank-reduced loss terms: 'loss' (weighted total), each weighted term, each '<k>_unscaled'."""
    total, weighted = total_loss(reduced, weight_dict)
    return {"loss": float(total), **{k: float(v) for k, v in weighted.items()},
            **{f"{k}_unscaled": float(v) for k, v in reduced.items()}}


@dataclass
class EpochTally:
    """What one epoch has summed so far for its log record: the meters, the skipped non-finite steps and
    the ids of images skip_bad_images replaced. A mid-epoch checkpoint stores state(), so an epoch resumed
    from it logs the same averages as one that ran through."""
    meters: Dict[str, SmoothedValue] = field(default_factory=dict)
    nonfinite: int = 0
    skipped: set = field(default_factory=set)

    def state(self) -> dict:
        return {"meters": {k: {"total": m.total, "count": m.count, "window": list(m.values)}
                           for k, m in self.meters.items()},
                "nonfinite": self.nonfinite, "skipped": sorted(self.skipped)}

    @classmethod
    def from_state(cls, state: dict) -> "EpochTally":
        meters = {}
        for k, m in state["meters"].items():
            meters[k] = SmoothedValue()
            meters[k].values.extend(m["window"])
            meters[k].total, meters[k].count = m["total"], m["count"]
        return cls(meters, int(state["nonfinite"]), set(state["skipped"]))


def train_one_epoch(model: nn.Module, criterion: nn.Module, data_loader, optimizer: torch.optim.Optimizer,
                    device: torch.device, epoch: int, *, max_norm: float = 0.0, amp: bool = False,
                    scaler: Optional[torch.amp.GradScaler] = None, lr_scheduler=None, ema=None,
                    print_freq: int = 10, debug: bool = False, skip_nonfinite: bool = False,
                    tb_writer=None, start: int = 0, tally: Optional[EpochTally] = None,
                    after_step: Optional[Callable[[int], None]] = None) -> Dict[str, float]:
    """Train for one pass over data_loader; returns epoch-averaged stats.

    Stats: 'loss' (weighted total), each weighted term, each '<term>_unscaled',
    'lr', and 'nonfinite_steps'. `lr_scheduler` (if given) is stepped every
    iteration (OneCycleLR). Raises NonFiniteLossError on a NaN/inf loss unless
    skip_nonfinite, in which case the step is skipped and counted.
    An epoch resumed in its middle: data_loader yields the batches from iteration `start` on and
    `tally` holds what the iterations before it summed. after_step(iterations done) runs after every
    iteration (mid-epoch checkpoints, preemption; it may raise to stop).
    """
    model.train()
    criterion.train()
    tally = tally if tally is not None else EpochTally()
    meters = MetricLogger(logging.getLogger(LOGGER_NAME), print_freq, device)
    meters.meters = tally.meters
    total = len(data_loader)
    batches = meters.log_every(data_loader, f"Epoch: [{epoch}]", total, first=start)
    for it, (samples, targets) in enumerate(batches, start):
        samples, targets = _batch_to(samples, targets, device, tally.skipped)
        logged = _train_step(model, criterion, optimizer, samples, targets, device, f"epoch {epoch} iteration {it}",
                             amp=amp, scaler=scaler, max_norm=max_norm, skip_nonfinite=skip_nonfinite)
        if logged is None:
            tally.nonfinite += 1
        else:
            if lr_scheduler is not None:
                lr_scheduler.step()
            if ema is not None:
                ema.update(model.module if hasattr(model, "module") else model)
            logged["lr"] = optimizer.param_groups[0]["lr"]
            meters.update(**logged)
            if tb_writer is not None:
                for k in ["loss", "lr", *(k for k in logged if k in criterion.weight_dict)]:
                    tb_writer.add_scalar(f"train/{k}", logged[k], epoch * total + it)
        if after_step is not None:
            after_step(it + 1)
        if debug and it + 1 >= DEBUG_ITERATIONS:
            break
    stats = meters.global_averages()
    stats["nonfinite_steps"] = tally.nonfinite
    stats["skipped_images"] = _count_across_ranks(tally.skipped)
    return stats


def _train_step(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, samples, targets,
                device: torch.device, at: str, *, amp: bool, scaler, max_norm: float,
                skip_nonfinite: bool) -> Optional[Dict[str, float]]:
    """Forward, backward and optimizer step of one batch (`at`: 'epoch E iteration I'); the logged loss
    terms, or None when the loss was not finite and skip_nonfinite skipped the step (else
    NonFiniteLossError)."""
    where = f"training ({at}"
    losses, loss_dict = _guard_oom(lambda: _forward_losses(model, criterion, samples, targets, device, amp),
                                   where + ", forward)", samples)
    # reduce over ranks so every rank takes the same skip/stop decision
    reduced = dist_utils.all_reduce_mean({k: v.float() for k, v in loss_dict.items()})
    loss_terms = _logged_losses(reduced, criterion.weight_dict)
    optimizer.zero_grad(set_to_none=True)
    if not math.isfinite(loss_terms["loss"]):
        _nonfinite_step(loss_terms, [k for k in reduced if k in criterion.weight_dict], at, skip_nonfinite)
        return None
    _guard_oom(lambda: _backward_and_step(losses, model, optimizer, scaler, max_norm), where + ", backward)",
               samples)
    return loss_terms


def _forward_losses(model: nn.Module, criterion: nn.Module, samples, targets, device: torch.device, amp: bool):
    """(weighted total loss, loss_dict) of one training forward."""
    with autocast(device, amp):
        outputs = model(samples, targets)
        loss_dict = criterion(outputs, targets)
        losses, _ = total_loss(loss_dict, criterion.weight_dict)
    return losses, loss_dict


def _guard_oom(step: Callable, where: str, samples):
    """step(), with out-of-memory turned into a ResourceError naming `where` and the batch. The error
    is raised outside the except block so the failed step's tensors are freed first."""
    try:
        return step()
    except torch.OutOfMemoryError as e:
        oom = _oom_error(e, where, samples)
    raise oom


def _nonfinite_step(loss_terms: Dict[str, float], names: List[str], at: str, skip: bool) -> None:
    """A NaN/inf loss at `at` ('epoch E iteration I'): NonFiniteLossError, or (skip) a warning naming
    every term."""
    terms = ", ".join(f"{k}={loss_terms[k]:.4g}" for k in names)
    if not skip:
        raise NonFiniteLossError(
            f"non-finite loss {loss_terms['loss']} at {at}: {terms}; the checkpoints written before this step "
            f"are untouched (lower lr / check the data, or pass --skip_nonfinite)")
    logging.getLogger(LOGGER_NAME).warning("skipping step: non-finite loss at %s: %s", at, terms)


def _backward_and_step(losses, model, optimizer, scaler, max_norm: float) -> None:
    """Backward + optional clipping + step. With a GradScaler (fp16), a step whose gradients
    overflowed is skipped by scaler.step and the scale is lowered by scaler.update."""
    if scaler is not None:
        scaler.scale(losses).backward()
        if max_norm > 0:
            scaler.unscale_(optimizer)  # clip the true gradients; inf/nan here make scaler.step skip
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        scaler.step(optimizer)
        scaler.update()
    else:
        losses.backward()
        if max_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()


BBOX_DECIMALS, SCORE_DECIMALS = 3, 5  # the one rounding of every COCO results file (1/1000 px, 1e-5 score)


def write_coco_results(detections: Dict[int, np.ndarray], path: str,
                       fields: Optional[Callable[[int, int], Dict]] = None) -> int:
    """Stream {image_id: (K, 6) [x, y, w, h, score, label]} to a COCO results JSON list.

    Each entry is {image_id, category_id, bbox [x, y, w, h], score}, rounded to BBOX_DECIMALS /
    SCORE_DECIMALS, plus fields(image_id, label) if given (e.g. a file name and class name).
    Written one detection at a time (no second copy of all results in memory), to a temp
    file renamed into place (util/disk.atomic_file: a failed write, e.g. a full disk, leaves the old
    file and no temp file, and raises DiskWriteError). Returns the number of detections written.
    """
    total = sum(len(d) for d in detections.values())
    n = chars = 0

    def needed():  # what the whole file takes, from the characters per detection written so far
        return int(chars / n * total) if n else None

    with atomic_file(path, "w", needed=needed) as f:
        f.write("[")
        for image_id in sorted(detections):
            for x, y, w, h, score, label in detections[image_id].tolist():
                entry = {"image_id": int(image_id), "category_id": int(label),
                         "bbox": [round(v, BBOX_DECIMALS) for v in (x, y, w, h)],
                         "score": round(score, SCORE_DECIMALS)}
                if fields is not None:
                    entry.update(fields(int(image_id), int(label)))
                text = ("," if n else "") + json.dumps(entry)
                f.write(text)
                n, chars = n + 1, chars + len(text)
        f.write("]")
    return n


def _eval_step(model: nn.Module, criterion: Optional[nn.Module], samples, targets: List[Dict],
               device: torch.device, amp: bool, it: int):
    """Eval forward of one batch and, with a criterion, its loss dict: (outputs, loss_dict or None).
    Out of memory becomes a ResourceError, raised outside the except block so that the failed
    step's tensors are freed first."""
    try:
        with autocast(device, amp):
            outputs = model(samples, targets)
            return outputs, (criterion(outputs, targets) if criterion is not None else None)
    except torch.OutOfMemoryError as e:
        oom = _oom_error(e, f"evaluation (iteration {it})", samples)
    raise oom


def _detections(outputs: Dict, targets: List[Dict], postprocessors: Dict) -> Dict[int, Dict[str, torch.Tensor]]:
    """image_id -> {'boxes' (K, 4) xyxy in pixels of the stored image, 'scores' (K,), 'labels' (K,)}."""
    orig_sizes = torch.stack([t["orig_size"] for t in targets], dim=0)
    results = postprocessors["bbox"](outputs, orig_sizes)
    return {int(t["image_id"].item()): r for t, r in zip(targets, results)}


@torch.no_grad()
def predict(model: nn.Module, postprocessors: Dict, data_loader, device: torch.device, *, amp: bool = False,
            debug: bool = False, print_freq: int = 10,
            after_batch: Optional[Callable[[], None]] = None) -> Dict[int, np.ndarray]:
    """Detections for every image of data_loader, gathered from all ranks, without evaluation
    (COCO test-dev): image_id -> (K, 6) float32 [x, y, w, h, score, label], absolute COCO xywh.
    after_batch() runs after every batch (a preemption check; it may raise to stop)."""
    from datasets.coco_eval import DetectionStore

    model.eval()
    meters = MetricLogger(logging.getLogger(LOGGER_NAME), print_freq, device)
    store = DetectionStore()
    for it, (samples, targets) in enumerate(meters.log_every(data_loader, "Predict:", len(data_loader))):
        # an image skipped by skip_bad_images is simply absent from the result (the caller counts images)
        samples, targets = _batch_to(samples, targets, device, set())
        outputs, _ = _eval_step(model, None, samples, targets, device, amp, it)
        store.update(_detections(outputs, targets, postprocessors))
        if after_batch is not None:
            after_batch()
        if debug and it + 1 >= DEBUG_ITERATIONS:
            break
    store.synchronize_between_processes()
    return store.detections


@torch.no_grad()
def evaluate(model: nn.Module, criterion: nn.Module, postprocessors: Dict, data_loader, base_ds,
             device: torch.device, *, output_dir: Optional[str] = None, amp: bool = False,
             eval_backend: str = "pycocotools", save_results: bool = False, debug: bool = False,
             print_freq: int = 10, recorders: Sequence = (), after_batch: Optional[Callable[[], None]] = None):
    """Evaluate on data_loader; returns (stats, coco_evaluator).

    stats holds averaged losses (as in training) and 'coco_eval_bbox' (12 COCO
    numbers). With save_results, rank 0 writes output_dir/results.json (COCO
    detection format, gathered from all ranks). Each of `recorders` (see
    models.registry.EvalRecorder) sees every batch's outputs and targets. after_batch() runs after
    every batch (a preemption check; it may raise to stop).
    """
    from datasets.coco_eval import CocoEvaluator  # imported late: datasets is optional for training utils

    model.eval()
    criterion.eval()
    log = logging.getLogger(LOGGER_NAME)
    meters = MetricLogger(log, print_freq, device)
    weight_dict = criterion.weight_dict
    evaluator = CocoEvaluator(base_ds, iou_types=("bbox",), backend=eval_backend)
    skipped = set()
    for it, (samples, targets) in enumerate(meters.log_every(data_loader, "Test:", len(data_loader))):
        samples, targets = _batch_to(samples, targets, device, skipped)
        outputs, loss_dict = _eval_step(model, criterion, samples, targets, device, amp, it)
        reduced = dist_utils.all_reduce_mean({k: v.float() for k, v in loss_dict.items()})
        meters.update(**_logged_losses(reduced, weight_dict))
        for recorder in recorders:
            recorder.update(outputs, targets)
        evaluator.update(_detections(outputs, targets, postprocessors))
        if after_batch is not None:
            after_batch()
        if debug and it + 1 >= DEBUG_ITERATIONS:
            break
    evaluator.synchronize_between_processes()
    evaluator.accumulate()
    evaluator.summarize()
    stats = meters.global_averages()
    stats["coco_eval_bbox"] = [float(x) for x in evaluator.stats("bbox")]
    stats["skipped_images"] = _count_across_ranks(skipped)
    if save_results and dist_utils.is_main_process() and output_dir:
        # the evaluator already holds every rank's detections as compact arrays
        write_coco_results(evaluator.detections, os.path.join(output_dir, "results.json"))
    return stats, evaluator
