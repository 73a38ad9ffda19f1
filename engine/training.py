"""The steps of a run after setup: the epoch loop with its checkpoints and evaluations (`train`), one
evaluation (`evaluate_once`, --eval) and COCO test-dev detections (`write_test_dev`, --test)."""
import argparse
import datetime
import json
import logging
import os
import re
import time
from typing import List

import torch

import models
from datasets.coco_eval import metrics_lines
from datasets.loaders import seed_epoch
from util import dist as dist_utils
from util.checkpoint import args_to_dict, save_checkpoint
from util.disk import atomic_file
from util.log_records import append_log_record, read_log_records, training_epochs
from util.logger import LOGGER_NAME
from util.preemption import WATCH
from util.run_lock import RunLockError
from util.visualize import save_prediction_grid

from .checkpoint_policy import CheckpointPolicy, best_epoch, files_written
from .loops import EpochTally, predict, train_one_epoch, write_coco_results
from .metrics import metrics_record, per_class_lines, read_metrics, wants_per_class, write_metrics
from .resume_state import CheckpointClock, Position, rng_state, set_rng_state
from .run import Run, raise_if_preempted

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
    test_stats, evaluator = run.evaluate(recorders=recorders)
    written = []
    for spec, recorder in zip(wanted, recorders):
        summary = recorder.summary()
        if run.main_proc:
            written.append(os.path.join(args.output_dir, spec.output_file))
            with atomic_file(written[-1], "w") as f:
                json.dump(summary, f, indent=2)
            log.info("%s (written to %s)", spec.describe(summary), written[-1])
    if run.main_proc:  # marked, so tools that read training epochs skip it
        append_log_record(run.log_path, {**{f"test_{k}": v for k, v in test_stats.items()}, **run.data_counts,
                                         "mode": "eval", "checkpoint": run.resumed_from, "debug": args.debug,
                                         "n_parameters": run.n_parameters,
                                         # images per process per batch: padding changes AP (DETR's most of all)
                                         "val_batch_size": args.val_batch_size})
        record = write_epoch_metrics(run, evaluator, mode="eval", checkpoint=run.resumed_from)
        if wants_per_class(args.per_class, record):
            for line in per_class_lines(record):
                log.info("%s", line)
        results = [os.path.join(args.output_dir, "results.json")] if args.save_results else []
        log.info("wrote %s", ", ".join([os.path.join(args.output_dir, "metrics.json"), run.log_path, *results,
                                        *written]))
    return test_stats


def write_epoch_metrics(run: Run, evaluator, **context) -> dict:
    """output_dir/metrics.json of this evaluation (engine/metrics.py); returns its content."""
    record = metrics_record(evaluator, run.class_names, config=run.args.config_file, **context)
    write_metrics(os.path.join(run.args.output_dir, "metrics.json"), record)
    return record


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
    """The epoch loop from args.start_epoch, then the summary; returns the last epoch's log record."""
    args, start = run.args, time.time()
    previous = training_epochs(read_log_records(run.log_path, missing_ok=True))
    run.best = {"regular": _best_logged_ap(previous, "test_coco_eval_bbox"),
                "ema": _best_logged_ap(previous, "ema_test_coco_eval_bbox")}
    if args.start_epoch >= args.epochs and run.resumed_from:
        last = next((r for r in reversed(previous) if r.get("test_coco_eval_bbox")), {})
        log.info("training is complete: %d of %d epochs in %s, best AP %.1f, last AP %.1f (AP x 100); nothing to do "
                 "(raise --options epochs=N to train longer)", args.start_epoch, args.epochs, args.output_dir,
                 100 * run.best["regular"], 100 * (last.get("test_coco_eval_bbox") or [-0.01])[0])
        return last
    _recover_missing_epoch(run, previous)
    _restore_best_file(run, previous)
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
        for line in training_summary(run, time.time() - start):
            log.info("%s", line)
    return record


def training_summary(run: Run, seconds: float) -> List[str]:
    """The lines that end a training run: wall time, the best epoch and its AP, the last evaluation's metrics
    (and per-class table), and the files written."""
    args = run.args
    records = training_epochs(read_log_records(run.log_path, missing_ok=True))
    best = best_epoch(records)
    best_ap = next((100 * r["test_coco_eval_bbox"][0] for r in records if r.get("epoch") == best), None)
    best_text = f"best epoch {best}: AP {best_ap:.1f}" if best_ap is not None else "no epoch was evaluated"
    lines = [f"training done in {datetime.timedelta(seconds=int(seconds))} (epochs {args.start_epoch}-"
             f"{args.epochs - 1} in this run, {args.epochs} in all); {best_text}"]
    metrics = read_metrics(os.path.join(args.output_dir, "metrics.json"))
    if metrics is not None:
        precision, recall = metrics_lines(metrics)
        lines += [f"last evaluation (epoch {metrics.get('epoch')}, {metrics['images']} images, x 100): {precision}",
                  f"last evaluation recall (x 100): {recall}"]
        if wants_per_class(args.per_class, metrics):
            lines += per_class_lines(metrics)
    lines.append(f"checkpoints in {args.output_dir}: {', '.join(files_written(args.output_dir)) or 'none'}")
    lines.append("also there: log.txt (every epoch's numbers), info.txt (this log), metrics.json, predictions.png, "
                 "config_cfg.py, config_args_all.json")
    return lines


def save_predictions_png(run: Run) -> str:
    """output_dir/predictions.png: the trained model's detections on the first val images, drawn as
    tools/inference.py draws them (util/visualize.py)."""
    dataset = run.loaders.dataset_val
    names = run.class_names
    path = os.path.join(run.args.output_dir, "predictions.png")
    count = min(PREDICTION_IMAGES, len(dataset))
    with torch.no_grad():
        save_prediction_grid(run.model_without_ddp, run.postprocessors, dataset, range(count), path, names=names)
    log.info("predicted boxes on %d val images: %s", count, path)
    return path


def run_epoch(run: Run, epoch: int, tb_writer=None) -> dict:
    """Train one epoch (from where a mid-epoch checkpoint stopped, when one did), checkpoint, evaluate (and
    the EMA), append the epoch's log record."""
    args, t0 = run.args, time.time()
    start, tally = _start_epoch(run, epoch)
    ema = run.ema if run.ema is not None and epoch >= args.ema_epoch else None
    train_stats = train_one_epoch(
        run.model, run.criterion, run.loaders.train, run.optimizer, run.device, epoch, max_norm=args.clip_max_norm,
        amp=args.amp, scaler=run.scaler, lr_scheduler=run.lr_scheduler if run.per_iter else None, ema=ema,
        debug=args.debug, skip_nonfinite=args.skip_nonfinite, tb_writer=tb_writer, start=start, tally=tally,
        after_step=_after_step(run, epoch, tally))
    if not run.per_iter:
        run.lr_scheduler.step()
    ckpt = save_epoch_checkpoints(run, epoch)
    run.clock.restart()
    test_stats, evaluator = run.evaluate()
    if run.main_proc:
        write_epoch_metrics(run, evaluator, mode="train", epoch=epoch,
                            checkpoint=os.path.join(args.output_dir, "checkpoint.pth"))
    record = {**{f"train_{k}": v for k, v in train_stats.items()}, **{f"test_{k}": v for k, v in test_stats.items()}}
    _keep_best(run, "regular", test_stats, ckpt, "checkpoint_best_regular.pth", is_last=epoch + 1 >= args.epochs)
    if run.ema is not None:
        ema_stats, _ = run.evaluate(run.ema.module, save_results=False)
        record.update({f"ema_test_{k}": v for k, v in ema_stats.items()})
        # the EMA weights as "model", so --resume / inference load them directly
        _keep_best(run, "ema", ema_stats, {"model": ckpt["ema_model"], "epoch": epoch, "args": ckpt["args"]},
                   "checkpoint_best_ema.pth", is_last=False)
        record["best_ema_ap"] = run.best["ema"]
    record.update(run.data_counts)
    record.update(epoch=epoch, n_parameters=run.n_parameters, best_ap=run.best["regular"],
                  now_time=time.strftime("%Y-%m-%d %H:%M:%S"), epoch_time=time.time() - t0)
    if run.main_proc:
        append_log_record(run.log_path, record)
    ap = 100 * test_stats["coco_eval_bbox"][0]  # AP x 100 wherever a person reads it
    if tb_writer is not None:
        tb_writer.add_scalar("test/AP", ap, epoch)
        tb_writer.add_scalar("test/AP50", 100 * test_stats["coco_eval_bbox"][1], epoch)
    log.info("epoch %d done in %.1fs: AP %.1f (best %.1f)", epoch, time.time() - t0, ap, 100 * run.best["regular"])
    return record


def checkpoint_state(run: Run, epoch: int) -> dict:
    """What a checkpoint holds after `epoch` (the last completed one): model, optimizer, scheduler, scaler,
    EMA, args."""
    ckpt = {"model": run.model_without_ddp.state_dict(), "optimizer": run.optimizer.state_dict(),
            "lr_scheduler": run.lr_scheduler.state_dict(), "epoch": epoch, "args": args_to_dict(run.args),
            "scaler": run.scaler.state_dict() if run.scaler is not None else None}
    if run.ema is not None:
        ckpt["ema_model"] = run.ema.state_dict()
    return ckpt


def save_epoch_checkpoints(run: Run, epoch: int) -> dict:
    """checkpoint.pth every epoch, checkpointNNNN.pth at lr drops and every save_checkpoint_interval
    epochs, as the run's CheckpointPolicy says (rank 0); returns the checkpoint dict."""
    args = run.args
    ckpt = checkpoint_state(run, epoch)
    if run.main_proc:
        policy = CheckpointPolicy.of(args)
        for name in policy.epoch_files(epoch, args.lr_drop, args.save_checkpoint_interval):
            save_checkpoint(policy.content(ckpt, final=epoch + 1 >= args.epochs), os.path.join(args.output_dir, name))
        for path in policy.prune(args.output_dir):
            log.info("removed %s (keep_checkpoints=%d keeps the newest numbered checkpoints)", path, policy.keep)
    return ckpt


def _start_epoch(run: Run, epoch: int):
    """Seed the epoch; in the epoch a mid-epoch checkpoint stopped in, also go to its iteration and restore
    every rank's RNG state and the epoch's running sums. Returns (first iteration, EpochTally)."""
    args, position = run.args, run.position
    run.position = None
    if run.clock is None:  # counts from the first epoch this process trains
        run.clock = CheckpointClock(args.checkpoint_every_iters, args.checkpoint_every_minutes)
    if position is None or position.epoch != epoch:
        seed_epoch(run.loaders, args.seed, args.rank, epoch)
        return 0, EpochTally()
    start, same_layout = position.start_for(args.world_size, args.batch_size)
    seed_epoch(run.loaders, args.seed, args.rank, epoch, start)
    mine = position.ranks[args.rank if same_layout else 0]
    if same_layout:
        set_rng_state(mine["rng"])
    else:
        log.warning("the mid-epoch checkpoint was written by %d process(es) of batch %d, this run has %d of batch "
                    "%d: epoch %d continues after the same number of images (%d iterations), but not with the same "
                    "batches as an uninterrupted run", position.world_size, position.batch_size, args.world_size,
                    args.batch_size, epoch, start)
    log.info("continuing epoch %d at iteration %d of %d (mid-epoch checkpoint)", epoch, start,
             len(run.loaders.train))
    return start, EpochTally.from_state(mine["tally"])


def _after_step(run: Run, epoch: int, tally: EpochTally):
    """train_one_epoch's after_step: every rank agrees (one small collective) whether a mid-epoch checkpoint
    is due, a preemption signal arrived or another run took the folder over; then checkpoint and/or stop."""
    total = len(run.loaders.train)

    def after_step(done: int) -> None:
        lock_lost = run.lock is not None and run.lock.lost is not None
        due, stop, lost = dist_utils.any_rank([done < total and run.clock.due(done), WATCH.requested, lock_lost])
        if lost:
            by = run.lock.lost if lock_lost else "see rank 0's info.txt"
            raise RunLockError(f"{run.args.output_dir} was taken over by another run ({by}); this run stopped at "
                               f"epoch {epoch} iteration {done} without writing there again")
        if due or stop:
            path = save_mid_epoch_checkpoint(run, epoch, done, tally)
            run.clock.restart()
        if stop:
            raise WATCH.stop(f"at epoch {epoch} iteration {done} of {total}: wrote {path}; rerun the same command "
                             f"to continue from there")

    return after_step


def save_mid_epoch_checkpoint(run: Run, epoch: int, done: int, tally: EpochTally) -> str:
    """checkpoint.pth with the position in epoch `epoch` after `done` iterations (engine/resume_state.py);
    every rank takes part (their RNG states and sums are gathered), rank 0 writes. Returns the path."""
    args = run.args
    ranks = dist_utils.all_gather_object({"rng": rng_state(), "tally": tally.state()})
    position = Position(epoch, done, args.world_size, args.batch_size, ranks)
    path = os.path.join(args.output_dir, "checkpoint.pth")
    if run.main_proc:
        save_checkpoint({**checkpoint_state(run, epoch - 1), "position": position.to_dict()}, path)
        log.info("mid-epoch checkpoint: epoch %d, %d of %d iterations done: %s", epoch, done,
                 len(run.loaders.train), path)
    return path


def _keep_best(run: Run, which: str, stats: dict, ckpt: dict, name: str, is_last: bool) -> None:
    """When this epoch's AP beats the best so far of `which` ('regular' / 'ema'), output_dir/name holds what
    the policy keeps of `ckpt` (nothing, and no stale file, when it is the last epoch's checkpoint.pth)."""
    ap = stats["coco_eval_bbox"][0]
    if ap > run.best[which]:
        run.best[which] = ap
        if run.main_proc:
            path = os.path.join(run.args.output_dir, name)
            content = CheckpointPolicy.of(run.args).best_content(ckpt, is_last)
            if content is not None:
                save_checkpoint(content, path)
            elif os.path.isfile(path):
                os.remove(path)


def _restore_best_file(run: Run, previous: List[dict]) -> None:
    """A run whose best epoch was its last wrote no best file (best_checkpoint='weights'); before training on
    from it overwrites checkpoint.pth, the loaded weights (that epoch's) become the best file."""
    path = os.path.join(run.args.output_dir, "checkpoint_best_regular.pth")
    epoch = run.args.start_epoch - 1
    if (run.main_proc and run.resumed_from and CheckpointPolicy.of(run.args).best == "weights"
            and not os.path.isfile(path) and epoch >= 0 and best_epoch(previous) == epoch):
        save_checkpoint({"model": run.model_without_ddp.state_dict(), "epoch": epoch, "args": args_to_dict(run.args)},
                        path)
        log.info("wrote %s: epoch %d, the best so far, before training on overwrites checkpoint.pth", path, epoch)


def test_dev_file_name(args: argparse.Namespace) -> str:
    """COCO's evaluation server wants detections_test-dev2017_<method>_results.json (zipped);
    <method> is --note (letters, digits, '-' kept), else the config file's name."""
    stem = os.path.splitext(os.path.basename(args.config_file))[0]
    method = re.sub(r"[^A-Za-z0-9-]+", "", args.note) or re.sub(r"[^A-Za-z0-9-]+", "-", stem)
    return f"detections_test-dev2017_{method}_results.json"


def write_test_dev(run: Run) -> dict:
    """--test: detections for every test-dev image, written by rank 0; returns what was written."""
    args = run.args
    detections = predict(run.model, run.postprocessors, run.loaders.val, run.device, amp=args.amp, debug=args.debug,
                         after_batch=lambda: raise_if_preempted("the test-dev predictions"))
    stats = {"test_dev_images": len(detections), "test_dev_results": test_dev_file_name(args)}
    if run.main_proc:
        stats["test_dev_detections"] = write_coco_results(
            detections, os.path.join(args.output_dir, stats["test_dev_results"]))
        append_log_record(run.log_path, {**stats, "mode": "test", "checkpoint": run.resumed_from})
        log.info("wrote %d detections on %d test-dev images to %s; zip it and upload it to the COCO evaluation "
                 "server", stats["test_dev_detections"], len(detections), stats["test_dev_results"])
    return stats
