"""Setting up one run: its output folder, data, model, optimizer and the weights it starts from.

`build_run(args)` returns the `Run` the steps in engine/training.py read and update; `resume(run)`
loads --resume, else the newest checkpoint of output_dir, else --pretrain_model_path.
"""
import argparse
import json
import logging
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch

import datasets as datasets_mod
import models
from datasets.loaders import Loaders, build_loaders, seed_all
from util import dist as dist_utils
from util import host_memory
from util.checkpoint import (
    TMP_PREFIX,
    CheckpointError,
    args_to_dict,
    find_resume_checkpoint,
    load_checkpoint,
    load_model_state,
    load_resume_checkpoint,
    remove_stale_temp_files,
)
from util.disk import atomic_file
from util.logger import FILE_ONLY, LOGGER_NAME, setup_logger
from util.optim import ModelEMA, build_lr_scheduler, build_optimizer
from util.preemption import WATCH
from util.run_dir import eval_output_dir, expand_output_dir
from util.run_lock import RunLock, RunLockError
from util.slconfig import ConfigError, SLConfig

from .loops import evaluate
from .misfit import misfit_error
from .resume_state import CheckpointClock, Position

log = logging.getLogger(LOGGER_NAME)


@dataclass
class Run:
    """Everything one run builds; the steps in engine/training.py read and update it."""
    args: argparse.Namespace
    device: torch.device
    model: torch.nn.Module  # DDP-wrapped when distributed
    model_without_ddp: torch.nn.Module
    criterion: torch.nn.Module
    postprocessors: Dict
    loaders: Loaders
    base_ds: object  # pycocotools COCO ground truth of the val split
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    per_iter: bool  # the scheduler steps per iteration (OneCycleLR), else per epoch
    scaler: Optional[torch.amp.GradScaler]
    n_parameters: int
    data_counts: Dict[str, int]
    log_path: str
    ema: Optional[ModelEMA] = None
    resumed_from: Optional[str] = None
    best: Dict[str, float] = field(default_factory=dict)
    position: Optional[Position] = None  # where in its epoch the resumed checkpoint was written (mid-epoch)
    clock: Optional[CheckpointClock] = None  # when the next mid-epoch checkpoint is due (engine/training.py)
    lock: Optional[RunLock] = None  # output_dir/run.lock, held by rank 0 of a training run

    @property
    def main_proc(self) -> bool:
        return dist_utils.is_main_process()

    @property
    def class_names(self) -> Dict[int, str]:
        """Category id -> name of the val split's ground truth (stored in checkpoints, used by the tools)."""
        return {int(c["id"]): str(c.get("name") or f"class {c['id']}") for c in self.base_ds.dataset["categories"]}

    def evaluate(self, model=None, **overrides):
        """(stats, evaluator) of `model` (default the trained one) on the val loader."""
        kwargs = dict(output_dir=self.args.output_dir, amp=self.args.amp, eval_backend=self.args.eval_backend,
                      save_results=self.args.save_results, debug=self.args.debug,
                      after_batch=lambda: raise_if_preempted("an evaluation"))
        kwargs.update(overrides)
        return evaluate(model or self.model, self.criterion, self.postprocessors, self.loaders.val, self.base_ds,
                        self.device, **kwargs)


def raise_if_preempted(during: str) -> None:
    """Every rank agrees (one small collective) whether any got a preemption signal; if so, Preempted.
    For a stop outside a training iteration, whose checkpoints are already complete."""
    if dist_utils.any_rank([WATCH.requested])[0]:
        raise WATCH.stop(f"during {during}; the checkpoints written so far are complete: rerun the same command to "
                         f"continue")


def settle_output_dir(args) -> None:
    """Expand %j / %t (rank 0's clock for every rank). For --eval / --test also pick the weights
    (--resume, --pretrain_model_path, else the newest checkpoint of output_dir) and their own
    folder (util/run_dir.eval_output_dir), so no evaluation writes into a training run's files."""
    args.output_dir = dist_utils.all_gather_object(
        expand_output_dir(args.output_dir, os.environ, job_fallback=args.eval))[0]
    if not args.eval:
        return
    weights = args.resume or args.pretrain_model_path or find_resume_checkpoint(args.output_dir)
    if not weights:
        what = "--test" if args.test else "--eval"
        raise ConfigError(f"{what} needs trained weights: pass --resume CHECKPOINT (no checkpoint given and none "
                          f"in {args.output_dir})")
    if not args.pretrain_model_path:
        args.resume = weights
    args.output_dir = eval_output_dir(args.output_dir if args.output_dir_given else None, args.output_dir,
                                      weights, args.debug)


def check_from_scratch(args) -> None:
    """Refuse to train with random backbone weights that stay frozen (the stem, FrozenBatchNorm2d, or all).

    Skipped when no training from these weights happens: --eval, or a checkpoint that will replace
    them (--resume, --pretrain_model_path, or a checkpoint in output_dir that auto-resume will load).
    """
    if args.eval or args.resume or args.pretrain_model_path:
        return
    frozen = models.frozen_random_layers(args)
    if frozen and not find_resume_checkpoint(args.output_dir):
        raise ConfigError(
            f"backbone_weights=None starts the {args.backbone} from random weights, but {' and '.join(frozen)} "
            f"keeps random layers frozen: set backbone_freeze_stem=False and batch_norm_type=BatchNorm2d "
            f"(and lr_backbone > 0) as config/DINO/DINO_synthetic.py does, or give weights with "
            f"--options backbone_weights=IMAGENET1K_V1 (or a .pth path)")


def prepare_output_dir(args) -> logging.Logger:
    """Create output_dir, start the logger, dump the resolved config and args (rank 0)."""
    if dist_utils.is_main_process():
        os.makedirs(args.output_dir, exist_ok=True)
    logger = setup_logger(args.output_dir, args.rank)
    logger.info("command: %s", " ".join(sys.argv))
    if dist_utils.is_main_process():
        SLConfig({k: getattr(args, k) for k in args.config_keys}, filename=args.config_file).dump(
            os.path.join(args.output_dir, "config_cfg.py"))
        with atomic_file(os.path.join(args.output_dir, "config_args_all.json"), "w") as f:
            json.dump(args_to_dict(args), f, indent=2)
    return logger


def hold_output_dir(args) -> Optional[RunLock]:
    """A training run's rank 0 takes output_dir/run.lock (util/run_lock.py) before anything is written there;
    when a live run holds it, every rank stops with the same line. --eval / --test write into their own
    folder and take no lock. Returns the lock (rank 0) or None."""
    if args.eval:
        return None
    lock, problem = None, None
    if dist_utils.is_main_process():
        lock = RunLock(args.output_dir, args.run_lock_heartbeat_s)
        try:
            lock.acquire()
        except RunLockError as e:
            lock, problem = None, str(e)
    problem = dist_utils.all_gather_object(problem)[0]
    if problem:
        raise RunLockError(problem)
    return lock


def build_run(args, lock: Optional[RunLock] = None) -> Run:
    """Output dir and logs, data (first, so a bad dataset path fails before the model is built),
    model, criterion, optimizer, scheduler and loss scaler. `lock`: hold_output_dir's."""
    check_from_scratch(args)  # random weights in a frozen stem / FrozenBatchNorm2d: refused before anything runs
    logger = prepare_output_dir(args)
    if lock is not None and lock.took_over:
        logger.warning("%s", lock.took_over)
    for note in vars(args).get("setup_notes", ()):  # what build_args decided for the user (engine/cli.py)
        logger.info("%s", note)
    seed_all(args.seed + args.rank)
    device = torch.device(args.device)
    if not host_memory.apply_config(args):
        logger.info("keep_freed_host_memory: this malloc is not glibc's; left as it is")
    models.apply_runtime_config(args)
    loaders = build_loaders(args, datasets_mod.build_dataset)
    model, criterion, postprocessors = models.build_model(args)
    model.to(device)
    criterion.to(device)
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("number of trainable params: %d", n_parameters)
    optimizer = build_optimizer(model, args)
    lr_scheduler, per_iter = build_lr_scheduler(optimizer, args, len(loaders.train) if loaders.train else 1)
    wrapped = model
    if args.distributed:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=args.find_unused_params)
    # boxes dropped while reading the JSONs (no area after clipping); skipped images are counted per epoch
    data_counts = {"test_dropped_boxes": int(getattr(loaders.dataset_val, "num_degenerate_boxes", 0))}
    if loaders.train is not None:
        data_counts["train_dropped_boxes"] = int(getattr(loaders.dataset_train, "num_degenerate_boxes", 0))
    logger.info("data: %s", ", ".join(f"{k}={v}" for k, v in data_counts.items()))
    scaler = torch.amp.GradScaler("cuda") if args.amp and device.type == "cuda" else None
    run = Run(args, device, wrapped, model, criterion, postprocessors, loaders,
              datasets_mod.get_coco_api_from_dataset(loaders.dataset_val), optimizer, lr_scheduler, per_iter,
              scaler, n_parameters, data_counts, os.path.join(args.output_dir, "log.txt"), lock=lock)
    args.class_names = run.class_names  # saved with the args in every checkpoint; the tools name classes by it
    return run


def resume(run: Run) -> None:
    """Load --resume, else the newest valid checkpoint of output_dir (model, EMA and, when
    training, optimizer/scheduler/scaler/epoch), else --pretrain_model_path (weights only)."""
    args = run.args
    if run.main_proc:
        for stale in remove_stale_temp_files(args.output_dir):
            what = "checkpoint write" if os.path.basename(stale).startswith(TMP_PREFIX) else "write"
            log.warning("removed %s: an unfinished %s (the run was killed while saving)", stale, what)
    path, ckpt = args.resume, None
    if path:
        ckpt = load_checkpoint(path)
    else:
        path, ckpt = load_resume_checkpoint(args.output_dir) or (None, None)
        if path:
            log.info("auto-resume: found %s in output_dir (pass --resume to choose another)", path)
    ema_state = None
    if path:
        load_weights(run, ckpt, path, strict=True)
        log.info("resumed model weights from %s", path)
        if args.eval:
            warn_unseen_padding(args, ckpt.get("args"), path)
        run.resumed_from, ema_state = path, ckpt.get("ema_model")
        if not args.eval and "optimizer" in ckpt:
            run.optimizer.load_state_dict(ckpt["optimizer"])
            run.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
            args.start_epoch = int(ckpt["epoch"]) + 1
            if run.scaler is not None and ckpt.get("scaler"):
                run.scaler.load_state_dict(ckpt["scaler"])
            if ckpt.get("position"):
                run.position = Position.from_dict(ckpt["position"])
                log.info("%s is a mid-epoch checkpoint: epoch %d continues after iteration %d", path,
                         run.position.epoch, run.position.iteration)
        elif not args.eval and "epoch" in ckpt:  # weights only (engine/checkpoint_policy.py)
            args.start_epoch = int(ckpt["epoch"]) + 1
            restart_training_state(run, path)
    elif args.pretrain_model_path:
        ckpt = load_checkpoint(args.pretrain_model_path)
        load_weights(run, ckpt, args.pretrain_model_path, strict=False)
        run.resumed_from = args.pretrain_model_path
    if args.use_ema:  # a copy of the loaded weights, or the checkpoint's own EMA
        run.ema = ModelEMA(run.model_without_ddp, args.ema_decay)
        if ema_state is not None:
            run.ema.load_state_dict(ema_state)


def restart_training_state(run: Run, path: str) -> None:
    """Training on from a checkpoint without optimizer state: fresh optimizer moments, and the per-epoch lr
    schedule stepped to args.start_epoch so the lr is the one that epoch would have had."""
    if run.args.start_epoch < run.args.epochs:
        log.warning("%s has no optimizer state (final_checkpoint_optimizer=False, or a weights-only file): training "
                    "on from epoch %d starts the optimizer's moments anew", path, run.args.start_epoch)
    if not run.per_iter:
        with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": on purpose here
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(run.args.start_epoch):
                run.lr_scheduler.step()


def warn_unseen_padding(args, saved: Any, path: str) -> Optional[str]:
    """Warn (and return the line) when --eval puts more images per batch than the checkpoint was trained with
    (its stored batch_size, per process): the extra padding was never seen in training and changes the
    detections, and so AP. DETR-DC5, trained at 1 image per GPU, loses AP at 2; DETR R50 evaluated at 1 instead
    of 2 gives 42.1 / 21.4 / 46.0 / 61.1 against the reported 42.0 / 20.5 / 45.8 / 61.1 (facebookresearch/detr
    README and #217)."""
    trained = saved.get("batch_size") if isinstance(saved, dict) else None
    if not isinstance(trained, int) or args.val_batch_size <= trained:
        return None
    line = (f"{path} was trained with {trained} image(s) per process and this evaluation batches "
            f"val_batch_size={args.val_batch_size}: padding it never saw in training changes its detections "
            f"(DETR's AP moves by up to 1 point); --options val_batch_size={trained} evaluates as it was trained")
    log.warning(line)
    return line


def load_weights(run: Run, ckpt: dict, path: str, strict: bool) -> None:
    """Load ckpt['model'] (converted from another layout, e.g. an official DINO Swin file, when it is
    one); when the tensors do not fit, say which config the checkpoint was trained with (or, for an
    official release, which config it loads into) and how it differs from this run's (the full tensor
    list goes to info.txt)."""
    args = run.args
    ckpt["model"], converted = models.convert_state(ckpt["model"], args)
    for line in converted:
        log.info("%s: converted on load: %s", path, line)
    try:
        load_model_state(run.model_without_ddp, ckpt["model"], source=path, strict=strict,
                         ignore=None if strict else args.finetune_ignore)
    except CheckpointError as err:
        log.info("full load error: %s", err, extra={FILE_ONLY: True})
        raise misfit_error(path, ckpt.get("args"), args, ckpt["model"], run.model_without_ddp.state_dict(),
                           strict, release=models.checkpoint_origin(ckpt["model"], ckpt.get("args"))) from None
