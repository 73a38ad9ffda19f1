"""One training epoch and one evaluation pass (DINO's train_one_epoch / evaluate)."""
import json
import logging
import math
import os
from typing import Dict, Iterable, List, Optional

import torch
from torch import nn

from util import dist as dist_utils
from util.logger import LOGGER_NAME, MetricLogger

DEBUG_ITERATIONS = 15  # --debug: stop each loop after this many iterations (DINO's value)


class NonFiniteLossError(RuntimeError):
    """A NaN/inf training loss; the message names epoch, iteration and every loss term."""


def autocast(device: torch.device, enabled: bool):
    """AMP context: bf16 on CPU, fp16 on CUDA (fp16 needs the GradScaler the caller creates)."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


def targets_to(targets: Iterable[Dict], device: torch.device) -> List[Dict]:
    return [{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in t.items()} for t in targets]


def _weighted(loss_dict: Dict[str, torch.Tensor], weight_dict: Dict[str, float]) -> Dict[str, torch.Tensor]:
    return {k: v * weight_dict[k] for k, v in loss_dict.items() if k in weight_dict}


def train_one_epoch(model: nn.Module, criterion: nn.Module, data_loader, optimizer: torch.optim.Optimizer,
                    device: torch.device, epoch: int, *, max_norm: float = 0.0, amp: bool = False,
                    scaler: Optional[torch.amp.GradScaler] = None, lr_scheduler=None, ema=None,
                    print_freq: int = 10, debug: bool = False, skip_nonfinite: bool = False,
                    tb_writer=None) -> Dict[str, float]:
    """Train for one pass over data_loader; returns epoch-averaged stats.

    Stats: 'loss' (weighted total), each weighted term, each '<term>_unscaled',
    'lr', and 'nonfinite_steps'. `lr_scheduler` (if given) is stepped every
    iteration (OneCycleLR). Raises NonFiniteLossError on a NaN/inf loss unless
    skip_nonfinite, in which case the step is skipped and counted.
    """
    model.train()
    criterion.train()
    log = logging.getLogger(LOGGER_NAME)
    meters = MetricLogger(log, print_freq)
    weight_dict = criterion.weight_dict
    nonfinite = 0
    total = len(data_loader)
    for it, (samples, targets) in enumerate(meters.log_every(data_loader, f"Epoch: [{epoch}]", total)):
        samples = samples.to(device)
        targets = targets_to(targets, device)
        with autocast(device, amp):
            outputs = model(samples, targets)
            loss_dict = criterion(outputs, targets)
            weighted = _weighted(loss_dict, weight_dict)
            losses = sum(weighted.values())
        # reduce over ranks so every rank takes the same skip/stop decision
        reduced = dist_utils.all_reduce_mean({k: v.float() for k, v in loss_dict.items()})
        reduced_weighted = {k: v * weight_dict[k] for k, v in reduced.items() if k in weight_dict}
        loss_value = float(sum(reduced_weighted.values()))
        if not math.isfinite(loss_value):
            terms = ", ".join(f"{k}={float(v):.4g}" for k, v in reduced_weighted.items())
            if not skip_nonfinite:
                raise NonFiniteLossError(
                    f"non-finite loss {loss_value} at epoch {epoch} iteration {it}: {terms}; no checkpoint was "
                    f"written for this epoch (lower lr / check the data, or pass --skip_nonfinite)")
            log.warning("skipping step: non-finite loss at epoch %d iteration %d: %s", epoch, it, terms)
            optimizer.zero_grad(set_to_none=True)
            nonfinite += 1
            continue
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(losses).backward()
            if max_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            scaler.step(optimizer)
            scaler.update()
        else:
            losses.backward()
            if max_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            optimizer.step()
        if lr_scheduler is not None:
            lr_scheduler.step()
        if ema is not None:
            ema.update(model.module if hasattr(model, "module") else model)
        lr = optimizer.param_groups[0]["lr"]
        logged = {"loss": loss_value, "lr": lr, **{k: float(v) for k, v in reduced_weighted.items()},
                  **{f"{k}_unscaled": float(v) for k, v in reduced.items()}}
        meters.update(**logged)
        if tb_writer is not None:
            step = epoch * total + it
            for k in ["loss", "lr", *reduced_weighted]:
                tb_writer.add_scalar(f"train/{k}", logged[k], step)
        if debug and it + 1 >= DEBUG_ITERATIONS:
            break
    stats = meters.global_averages()
    stats["nonfinite_steps"] = nonfinite
    return stats


def _detections_to_coco(results: Dict[int, Dict[str, torch.Tensor]]) -> List[Dict]:
    """{image_id: {'scores','labels','boxes' xyxy}} -> COCO result list with xywh boxes."""
    out = []
    for image_id, r in results.items():
        boxes = r["boxes"].float().cpu().clone()
        boxes[:, 2:] -= boxes[:, :2]
        for box, score, label in zip(boxes.tolist(), r["scores"].tolist(), r["labels"].tolist()):
            out.append({"image_id": int(image_id), "category_id": int(label),
                        "bbox": [round(v, 3) for v in box], "score": round(float(score), 5)})
    return out


@torch.no_grad()
def evaluate(model: nn.Module, criterion: nn.Module, postprocessors: Dict, data_loader, base_ds,
             device: torch.device, *, output_dir: Optional[str] = None, amp: bool = False,
             eval_backend: str = "pycocotools", save_results: bool = False, debug: bool = False,
             print_freq: int = 10, emca_recorder=None):
    """Evaluate on data_loader; returns (stats, coco_evaluator).

    stats holds averaged losses (as in training) and 'coco_eval_bbox' (12 COCO
    numbers). With save_results, rank 0 writes output_dir/results.json (COCO
    detection format, gathered from all ranks). emca_recorder (an
    EmcaWeightRecorder) sees every batch's outputs and targets.
    """
    from datasets.coco_eval import CocoEvaluator  # imported late: datasets is optional for training utils

    model.eval()
    criterion.eval()
    log = logging.getLogger(LOGGER_NAME)
    meters = MetricLogger(log, print_freq)
    weight_dict = criterion.weight_dict
    evaluator = CocoEvaluator(base_ds, iou_types=("bbox",), backend=eval_backend)
    detections: List[Dict] = []
    for it, (samples, targets) in enumerate(meters.log_every(data_loader, "Test:", len(data_loader))):
        samples = samples.to(device)
        targets = targets_to(targets, device)
        with autocast(device, amp):
            outputs = model(samples, targets)
            loss_dict = criterion(outputs, targets)
        reduced = dist_utils.all_reduce_mean({k: v.float() for k, v in loss_dict.items()})
        reduced_weighted = {k: v * weight_dict[k] for k, v in reduced.items() if k in weight_dict}
        meters.update(loss=float(sum(reduced_weighted.values())),
                      **{k: float(v) for k, v in reduced_weighted.items()},
                      **{f"{k}_unscaled": float(v) for k, v in reduced.items()})
        if emca_recorder is not None:
            emca_recorder.update(outputs, targets)
        orig_sizes = torch.stack([t["orig_size"] for t in targets], dim=0)
        results = postprocessors["bbox"](outputs, orig_sizes)
        res = {int(t["image_id"].item()): r for t, r in zip(targets, results)}
        evaluator.update(res)
        if save_results:
            detections.extend(_detections_to_coco(res))
        if debug and it + 1 >= DEBUG_ITERATIONS:
            break
    evaluator.synchronize_between_processes()
    evaluator.accumulate()
    evaluator.summarize()
    stats = meters.global_averages()
    stats["coco_eval_bbox"] = [float(x) for x in evaluator.stats("bbox")]
    if save_results:
        gathered = [d for part in dist_utils.all_gather_object(detections) for d in part]
        if dist_utils.is_main_process() and output_dir:
            with open(os.path.join(output_dir, "results.json"), "w") as f:
                json.dump(gathered, f)
    return stats, evaluator
