"""The steps of a run after setup: the epoch loop with its checkpoints and evaluations (`train`), one
evaluation (`evaluate_once`, --eval) and COCO test-dev detections (`write_test_dev`, --test)."""
import argparse
import json
import logging
import os
import re
import time
from typing import List

import torch

import models
from datasets.loaders import seed_epoch
from util import dist as dist_utils
from util.checkpoint import args_to_dict, save_checkpoint
from util.log_records import append_log_record, read_log_records, training_epochs
from util.logger import LOGGER_NAME
from util.visualize import save_prediction_grid

from .loops import predict, train_one_epoch, write_coco_results
from .run import Run

log = logging.getLogger(LOGGER_NAME)
PREDICTION_IMAGES = 4  # val images drawn in output_dir/predictions.png after training


def _best_logged_ap(records: List[dict], key: str) -> float:
    """Best AP (first of the 12 COCO numbers) under `key` in log.txt records; -1 when none."""
    return max((r[key][0] for r in records if r.get(key)), default=-1.0)


def evaluate_once(run: Run) -> dict:
    """--eval: COCO metrics of the loaded weights, and what the requested recorders saw (e.g. EMCA's
    fusion weights with --save_emca_weights), each written to its file in output_dir."""
    args = run.args
    wanted = [r for flag, r in models.eval_recorders().items() if vars(args).get(flag)]
    recorders = [r.make(run.model_without_ddp, run.criterion, args) for r in wanted]
    test_stats, _ = run.evaluate(recorders=recorders)
    for spec, recorder in zip(wanted, recorders):
        summary = recorder.summary()
        if run.main_proc:
            path = os.path.join(args.output_dir, spec.output_file)
            with open(path, "w") as f:
                json.dump(summary, f, indent=2)
            log.info("%s (%s)", spec.describe(summary), path)
    if run.main_proc:  # marked, so tools that read training epochs skip it
        append_log_record(run.log_path, {**{f"test_{k}": v for k, v in test_stats.items()}, **run.data_counts,
                                         "mode": "eval", "checkpoint": run.resumed_from, "debug": args.debug,
                                         "n_parameters": run.n_parameters,
                                         # images per process per batch: padding changes AP (DETR's most of all)
                                         "val_batch_size": args.val_batch_size})
    return test_stats


def _recover_missing_epoch(run: Run, previous: List[dict]) -> None:
    """A kill between an epoch's checkpoint and its log line loses that line: evaluate that epoch again."""
    epoch = run.args.start_epoch - 1
    missing = run.main_proc and epoch >= 0 and epoch not in {r.get("epoch") for r in previous}
    if not dist_utils.all_gather_object(missing)[0]:
        return
    log.warning("log.txt has no line for epoch %d (the run stopped after its checkpoint); evaluating it again", epoch)
    test_stats, _ = run.evaluate()
    run.best["regular"] = max(run.best["regular"], test_stats["coco_eval_bbox"][0])
    if run.main_proc:
        append_log_record(run.log_path, {**{f"test_{k}": v for k, v in test_stats.items()}, **run.data_counts,
                                         "epoch": epoch, "recovered": True, "n_parameters": run.n_parameters})


def train(run: Run) -> dict:
    """The epoch loop from args.start_epoch; returns the last epoch's log record."""
    args = run.args
    previous = training_epochs(read_log_records(run.log_path, missing_ok=True))
    run.best = {"regular": _best_logged_ap(previous, "test_coco_eval_bbox"),
                "ema": _best_logged_ap(previous, "ema_test_coco_eval_bbox")}
    if args.start_epoch >= args.epochs and run.resumed_from:
        last = next((r for r in reversed(previous) if r.get("test_coco_eval_bbox")), {})
        log.info("training is complete: %d of %d epochs in %s, best AP %.4f, last AP %.4f; nothing to do (raise "
                 "--options epochs=N to train longer)", args.start_epoch, args.epochs, args.output_dir,
                 run.best["regular"], (last.get("test_coco_eval_bbox") or [-1.0])[0])
        return last
    _recover_missing_epoch(run, previous)
    tb_writer = None
    if args.tensorboard and run.main_proc:
        from torch.utils.tensorboard import SummaryWriter  # optional: only with --tensorboard
        tb_writer = SummaryWriter(os.path.join(args.output_dir, "tensorboard"))
    record = {}
    try:
        for epoch in range(args.start_epoch, args.epochs):
            record = run_epoch(run, epoch, tb_writer)
    finally:
        if tb_writer is not None:
            tb_writer.close()
    if run.main_proc:
        save_predictions_png(run)
    return record


def save_predictions_png(run: Run) -> str:
    """output_dir/predictions.png: the trained model's detections on the first val images, drawn as
    tools/inference.py draws them (util/visualize.py)."""
    dataset = run.loaders.dataset_val
    names = {c["id"]: c["name"] for c in run.base_ds.dataset.get("categories", [])}
    path = os.path.join(run.args.output_dir, "predictions.png")
    count = min(PREDICTION_IMAGES, len(dataset))
    with torch.no_grad():
        save_prediction_grid(run.model_without_ddp, run.postprocessors, dataset, range(count), path, names=names)
    log.info("predicted boxes on %d val images: %s", count, path)
    return path


def run_epoch(run: Run, epoch: int, tb_writer=None) -> dict:
    """Train one epoch, checkpoint, evaluate (and the EMA), append the epoch's log record."""
    args, t0 = run.args, time.time()
    seed_epoch(run.loaders, args.seed, args.rank, epoch)
    ema = run.ema if run.ema is not None and epoch >= args.ema_epoch else None
    train_stats = train_one_epoch(
        run.model, run.criterion, run.loaders.train, run.optimizer, run.device, epoch, max_norm=args.clip_max_norm,
        amp=args.amp, scaler=run.scaler, lr_scheduler=run.lr_scheduler if run.per_iter else None, ema=ema,
        debug=args.debug, skip_nonfinite=args.skip_nonfinite, tb_writer=tb_writer)
    if not run.per_iter:
        run.lr_scheduler.step()
    ckpt = save_epoch_checkpoints(run, epoch)
    test_stats, _ = run.evaluate()
    record = {**{f"train_{k}": v for k, v in train_stats.items()}, **{f"test_{k}": v for k, v in test_stats.items()}}
    _keep_best(run, "regular", test_stats, {k: v for k, v in ckpt.items() if k != "ema_model"},
               "checkpoint_best_regular.pth")
    if run.ema is not None:
        ema_stats, _ = run.evaluate(run.ema.module, save_results=False)
        record.update({f"ema_test_{k}": v for k, v in ema_stats.items()})
        # the EMA weights as "model", so --resume / inference load them directly
        _keep_best(run, "ema", ema_stats, {"model": ckpt["ema_model"], "epoch": epoch, "args": ckpt["args"]},
                   "checkpoint_best_ema.pth")
        record["best_ema_ap"] = run.best["ema"]
    record.update(run.data_counts)
    record.update(epoch=epoch, n_parameters=run.n_parameters, best_ap=run.best["regular"],
                  now_time=time.strftime("%Y-%m-%d %H:%M:%S"), epoch_time=time.time() - t0)
    if run.main_proc:
        append_log_record(run.log_path, record)
    ap = test_stats["coco_eval_bbox"][0]
    if tb_writer is not None:
        tb_writer.add_scalar("test/AP", ap, epoch)
        tb_writer.add_scalar("test/AP50", test_stats["coco_eval_bbox"][1], epoch)
    log.info("epoch %d done in %.1fs: AP %.4f (best %.4f)", epoch, time.time() - t0, ap, run.best["regular"])
    return record


def save_epoch_checkpoints(run: Run, epoch: int) -> dict:
    """checkpoint.pth every epoch, checkpointNNNN.pth at lr drops and every save_checkpoint_interval
    epochs (rank 0); returns the checkpoint dict."""
    args = run.args
    ckpt = {"model": run.model_without_ddp.state_dict(), "optimizer": run.optimizer.state_dict(),
            "lr_scheduler": run.lr_scheduler.state_dict(), "epoch": epoch, "args": args_to_dict(args),
            "scaler": run.scaler.state_dict() if run.scaler is not None else None}
    if run.ema is not None:
        ckpt["ema_model"] = run.ema.state_dict()
    if run.main_proc:
        save_checkpoint(ckpt, os.path.join(args.output_dir, "checkpoint.pth"))
        if (epoch + 1) % args.lr_drop == 0 or (epoch + 1) % args.save_checkpoint_interval == 0:
            save_checkpoint(ckpt, os.path.join(args.output_dir, f"checkpoint{epoch:04}.pth"))
    return ckpt


def _keep_best(run: Run, which: str, stats: dict, ckpt: dict, name: str) -> None:
    """Write output_dir/name when this epoch's AP beats the best so far of `which` ('regular' / 'ema')."""
    ap = stats["coco_eval_bbox"][0]
    if ap > run.best[which]:
        run.best[which] = ap
        if run.main_proc:
            save_checkpoint(ckpt, os.path.join(run.args.output_dir, name))


def test_dev_file_name(args: argparse.Namespace) -> str:
    """COCO's evaluation server wants detections_test-dev2017_<method>_results.json (zipped);
    <method> is --note (letters, digits, '-' kept), else the config file's name."""
    stem = os.path.splitext(os.path.basename(args.config_file))[0]
    method = re.sub(r"[^A-Za-z0-9-]+", "", args.note) or re.sub(r"[^A-Za-z0-9-]+", "-", stem)
    return f"detections_test-dev2017_{method}_results.json"


def write_test_dev(run: Run) -> dict:
    """--test: detections for every test-dev image, written by rank 0; returns what was written."""
    args = run.args
    detections = predict(run.model, run.postprocessors, run.loaders.val, run.device, amp=args.amp, debug=args.debug)
    stats = {"test_dev_images": len(detections), "test_dev_results": test_dev_file_name(args)}
    if run.main_proc:
        stats["test_dev_detections"] = write_coco_results(
            detections, os.path.join(args.output_dir, stats["test_dev_results"]))
        append_log_record(run.log_path, {**stats, "mode": "test", "checkpoint": run.resumed_from})
        log.info("wrote %d detections on %d test-dev images to %s; zip it and upload it to the COCO evaluation "
                 "server", stats["test_dev_detections"], len(detections), stats["test_dev_results"])
    return stats
