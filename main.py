"""Train / evaluate DINO and AugDETR.

Python API: `build_args(argv)` returns the resolved namespace (command-line flags plus every
checked config key, see util/config_schema.py); `main(args)` runs training, evaluation
(--eval) or test-dev prediction (--test). `python main.py --help` lists every flag with
examples; `python main.py -c CONFIG --print_config` lists every config key.
"""
import argparse
import gc
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from util import dist as dist_utils
from util.checkpoint import (
    CheckpointError,
    args_to_dict,
    find_resume_checkpoint,
    load_checkpoint,
    load_model_state,
    load_resume_checkpoint,
    misfit_error,
    remove_stale_temp_files,
    save_checkpoint,
)
from util.config_schema import describe, load_config
from util.log_records import append_log_record, read_log_records, training_epochs
from util.logger import FILE_ONLY, setup_logger
from util.optim import ModelEMA, build_lr_scheduler, build_optimizer
from util.run_dir import eval_output_dir, expand_output_dir
from util.slconfig import ConfigError, DictAction, SLConfig

DEFAULT_CONFIG = "config/DINO/DINO_synthetic.py"

# Flags that are also config keys: default None = "not given", so the config's value stands.
CONFIG_FLAGS = ("dataset_file", "fix_size", "use_hae", "num_hae_layers", "use_emca", "eval_backend")

EPILOG = """examples:
  # tiny DINO on the built-in synthetic dataset (CPU, minutes)
  python main.py
  # DINO 4-scale R50 on COCO (the AugDETR README command)
  python main.py --output_dir logs/DINO/R50-MS4 -c config/DINO/DINO_4scale.py --coco_path /data/coco \\
      --options dn_scalar=100 embed_init_tgt=TRUE dn_label_coef=1.0 dn_bbox_coef=1.0 use_ema=False \\
      dn_box_noise_scale=1.0 --use_hae --use_emca
  # evaluate a checkpoint
  python main.py -c config/DINO/DINO_4scale.py --coco_path /data/coco --eval --resume ckpt.pth
  # COCO test-dev detections for the evaluation server
  python main.py -c config/DINO/DINO_4scale.py --coco_path /data/coco --test --resume ckpt.pth
  # every config key with its value and meaning (--options KEY=VALUE changes one)
  python main.py -c config/DINO/DINO_4scale.py --print_config
  # 8 GPUs
  torchrun --nproc_per_node=8 main.py -c config/DINO/DINO_4scale.py --coco_path /data/coco
"""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="main.py", description="DINO / AugDETR training and evaluation", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config_file", "-c", default=DEFAULT_CONFIG,
                   help=f"Python config file (default {DEFAULT_CONFIG})")
    p.add_argument("--options", nargs="+", action=DictAction, metavar="KEY=VALUE",
                   help="override config keys: key=value (int/float/true/false/none/comma list/str); unknown keys "
                        "and values outside a key's type or range are errors (see --print_config)")
    p.add_argument("--print_config", action="store_true",
                   help="print every resolved config key with its value and meaning, then exit")
    _add_data_flags(p.add_argument_group("data"))
    _add_run_flags(p.add_argument_group("run"))
    _add_augdetr_flags(p.add_argument_group("AugDETR"))
    _add_distributed_flags(p.add_argument_group("distributed"))
    return p


def _add_data_flags(g) -> None:
    g.add_argument("--dataset_file", default=None, help="'coco' or 'synthetic' (default: the config's)")
    g.add_argument("--coco_path", default=None,
                   help="COCO root with train2017/ val2017/ annotations/ (required for dataset_file=coco)")
    g.add_argument("--fix_size", action="store_true", default=None,
                   help="train transform = flip + one fixed resize (default: the config's)")
    g.add_argument("--num_workers", type=int, default=2, help="DataLoader worker processes (default 2)")
    g.add_argument("--eval_backend", default=None, choices=["pycocotools", "faster_coco_eval"],
                   help="COCO evaluation library (default: the config's)")


def _add_run_flags(g) -> None:
    g.add_argument("--output_dir", default=None,
                   help="where logs and checkpoints go (default logs/<config file stem>); %%j = SLURM job id, "
                        "%%t = start time; --eval/--test write to <folder>/eval/<checkpoint stem> unless given "
                        "a folder that holds no training run")
    g.add_argument("--device", default="auto", help="'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:N'")
    g.add_argument("--seed", type=int, default=42, help="random seed; each process uses seed + rank")
    g.add_argument("--resume", default="", help="checkpoint to resume from (wins over auto-resume from output_dir)")
    g.add_argument("--pretrain_model_path", default=None,
                   help="weights-only warm start (non-strict load; ignored when resuming)")
    g.add_argument("--finetune_ignore", nargs="+", default=None, metavar="SUBSTRING",
                   help="drop pretrain keys containing any of these substrings, e.g. label_enc.weight class_embed")
    g.add_argument("--start_epoch", type=int, default=0, help="first epoch (set from the checkpoint on resume)")
    g.add_argument("--eval", action="store_true", help="evaluate once and exit")
    g.add_argument("--test", action="store_true",
                   help="COCO test-dev: detect on coco_path/test2017 (images listed in annotations/"
                        "image_info_test-dev2017.json) with the weights of --resume and write output_dir/"
                        "detections_test-dev2017_<name>_results.json for the evaluation server; no metrics")
    g.add_argument("--amp", action="store_true", help="mixed precision: fp16 + GradScaler on CUDA, bf16 on CPU")
    g.add_argument("--save_results", action="store_true",
                   help="eval writes COCO-format detections to output_dir/results.json")
    g.add_argument("--debug", action="store_true", help="stop train/eval loops after a few iterations")
    g.add_argument("--save_log", action="store_true",
                   help="accepted for DINO compatibility (logs always go to info.txt)")
    g.add_argument("--note", default="", help="free text saved with the args")
    g.add_argument("--skip_nonfinite", action="store_true",
                   help="skip optimizer steps whose loss is NaN/inf (counted as train_nonfinite_steps) "
                        "instead of stopping")
    g.add_argument("--tensorboard", action="store_true",
                   help="write per-iteration losses/lr and per-epoch AP to output_dir/tensorboard")


def _add_augdetr_flags(g) -> None:
    g.add_argument("--use_hae", action="store_true", default=None, help="Hybrid Attention Encoder")
    g.add_argument("--num_hae_layers", "--num_hybrid_layers", dest="num_hae_layers", type=int, default=None,
                   metavar="N", help="number of hybrid encoder layers (default: the config's)")
    g.add_argument("--use_emca", action="store_true", default=None, help="Encoder-Mixing Cross-Attention")
    g.add_argument("--save_emca_weights", action="store_true",
                   help="with --eval (and --use_emca): record the last decoder layer's EMCA fusion weights of the "
                        "matched queries and write their per-encoder-layer mean/std to output_dir/emca_weights.json")


def _add_distributed_flags(g) -> None:
    g.add_argument("--find_unused_params", action="store_true", help="DDP find_unused_parameters=True")
    g.add_argument("--world_size", type=int, default=1, help="set from WORLD_SIZE/SLURM_NTASKS when launched")
    g.add_argument("--dist_url", default="env://", help="process-group init method (default env://)")
    g.add_argument("--rank", type=int, default=0, help="set from RANK/SLURM_PROCID when launched")
    g.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=None,
                   help="set from LOCAL_RANK/SLURM_LOCALID (accepted from old launchers)")


def build_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse argv, load and check the config (file < --options < config flags), copy its keys onto args."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    flags = {k: getattr(args, k) for k in CONFIG_FLAGS if getattr(args, k) is not None}
    run_only = {a.dest for a in parser._actions} - set(CONFIG_FLAGS)
    cfg = load_config(args.config_file, args.options or {}, flags, run_only)
    for key, value in cfg.items():
        setattr(args, key, value)
    args.config_keys = list(cfg)
    args.output_dir_given = args.output_dir is not None
    if args.output_dir is None:
        args.output_dir = os.path.join("logs", os.path.splitext(os.path.basename(args.config_file))[0])
    args.device = resolve_device(args.device)
    if args.test:
        args.eval = True  # no training; the test split replaces the val split
    _check_run_flags(args)
    return args


def _check_run_flags(args) -> None:
    """Flag combinations and environment values that cannot work, as one-line errors."""
    from models.dino.ops.backend import BACKENDS
    env = os.environ.get("MSDA_BACKEND")
    if env and env not in BACKENDS:
        raise ConfigError(f"MSDA_BACKEND={env!r} is not one of {', '.join(BACKENDS)}; unset it or pick one")
    if args.save_emca_weights and not (args.use_emca and args.eval):
        raise ConfigError("--save_emca_weights records EMCA's fusion weights during an evaluation: add --eval "
                          "and --use_emca (the checkpoint must be an EMCA model)")


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' or 'cpu'; ConfigError for a device this machine does not have."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {name}: this machine has no CUDA device (torch.cuda.is_available() is "
                              f"False); use --device cpu")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {name}: this machine has {count} CUDA device(s); use cuda:0..cuda:{count - 1}")
    elif device.type != "cpu":
        raise ConfigError(f"--device {name}: only cpu and cuda devices are supported")
    return name


def _best_logged_ap(records: List[dict], key: str) -> float:
    """Best AP (first of the 12 COCO numbers) under `key` in log.txt records; -1 when none."""
    return max((r[key][0] for r in records if r.get(key)), default=-1.0)


@dataclass
class Run:
    """Everything one run builds; the steps below read and update it."""
    args: argparse.Namespace
    device: torch.device
    model: torch.nn.Module  # DDP-wrapped when distributed
    model_without_ddp: torch.nn.Module
    criterion: torch.nn.Module
    postprocessors: Dict
    loaders: object  # datasets.loaders.Loaders
    base_ds: object  # pycocotools COCO ground truth of the val split
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    per_iter: bool  # the scheduler steps per iteration (OneCycleLR), else per epoch
    scaler: Optional[torch.amp.GradScaler]
    n_parameters: int
    data_counts: Dict[str, int]
    log_path: str
    ema: Optional[ModelEMA] = None
    resumed_from: Optional[str] = None
    best: Dict[str, float] = field(default_factory=dict)

    @property
    def main_proc(self) -> bool:
        return dist_utils.is_main_process()

    def evaluate(self, model=None, **overrides):
        """(stats, evaluator) of `model` (default the trained one) on the val loader."""
        from engine import evaluate
        kwargs = dict(output_dir=self.args.output_dir, amp=self.args.amp, eval_backend=self.args.eval_backend,
                      save_results=self.args.save_results, debug=self.args.debug)
        kwargs.update(overrides)
        return evaluate(model or self.model, self.criterion, self.postprocessors, self.loaders.val, self.base_ds,
                        self.device, **kwargs)


def main(args: argparse.Namespace):
    """Run training (or evaluation with --eval, test-dev with --test); returns the last stats dict."""
    dist_utils.init_distributed_mode(args)
    run = None
    try:
        settle_output_dir(args)
        run = build_run(args)
        resume(run)
        if args.test:
            return write_test_dev(run)
        if args.eval:
            return evaluate_once(run)
        return train(run)
    finally:
        # DDP's reducer holds the process group. Freed last, its destructor joins gloo's worker
        # threads while holding the GIL, which a worker may wait for to free a gathered tensor: a
        # deadlock at exit (seen in 2 of 7 runs of tests/test_distributed.py on torch 2.11). So the
        # model goes first, and the group with destroy_process_group, which releases the GIL.
        run = None
        if dist_utils.is_dist():
            gc.collect()
        dist_utils.cleanup()


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


def _prepare_output_dir(args) -> logging.Logger:
    """Create output_dir, start the logger, dump the resolved config and args (rank 0)."""
    if dist_utils.is_main_process():
        os.makedirs(args.output_dir, exist_ok=True)
    log = setup_logger(args.output_dir, args.rank)
    log.info("command: %s", " ".join(sys.argv))
    if dist_utils.is_main_process():
        SLConfig({k: getattr(args, k) for k in args.config_keys}, filename=args.config_file).dump(
            os.path.join(args.output_dir, "config_cfg.py"))
        with open(os.path.join(args.output_dir, "config_args_all.json"), "w") as f:
            json.dump(args_to_dict(args), f, indent=2)
    return log


def build_run(args) -> Run:
    """Output dir and logs, data (first, so a bad dataset path fails before the model is built),
    model, criterion, optimizer, scheduler and loss scaler."""
    import datasets as datasets_mod
    from datasets.loaders import build_loaders, seed_all
    from models import build_model, select_msda_backend
    from models.common.backbones.weights import check_from_scratch
    from util import host_memory

    check_from_scratch(args)  # random weights in a frozen stem / FrozenBatchNorm2d: refused before anything runs
    log = _prepare_output_dir(args)
    seed_all(args.seed + args.rank)
    device = torch.device(args.device)
    if not host_memory.apply_config(args):
        log.info("keep_freed_host_memory: this malloc is not glibc's; left as it is")
    select_msda_backend(args.msda_backend)
    loaders = build_loaders(args, datasets_mod.build_dataset)
    model, criterion, postprocessors = build_model(args)
    model.to(device)
    criterion.to(device)
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("number of trainable params: %d", n_parameters)
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
        data_counts["train_dropped_boxes"] = int(getattr(loaders.train.dataset, "num_degenerate_boxes", 0))
    log.info("data: %s", ", ".join(f"{k}={v}" for k, v in data_counts.items()))
    scaler = torch.amp.GradScaler("cuda") if args.amp and device.type == "cuda" else None
    return Run(args, device, wrapped, model, criterion, postprocessors, loaders,
               datasets_mod.get_coco_api_from_dataset(loaders.dataset_val), optimizer, lr_scheduler, per_iter,
               scaler, n_parameters, data_counts, os.path.join(args.output_dir, "log.txt"))


def resume(run: Run) -> None:
    """Load --resume, else the newest valid checkpoint of output_dir (model, EMA and, when
    training, optimizer/scheduler/scaler/epoch), else --pretrain_model_path (weights only)."""
    args, log = run.args, logging.getLogger("detr")
    if run.main_proc:
        for stale in remove_stale_temp_files(args.output_dir):
            log.warning("removed %s: an unfinished checkpoint write (the run was killed while saving)", stale)
    path, ckpt = args.resume, None
    if path:
        ckpt = load_checkpoint(path)
    else:
        path, ckpt = load_resume_checkpoint(args.output_dir) or (None, None)
        if path:
            log.info("auto-resume: found %s in output_dir (pass --resume to choose another)", path)
    ema_state = None
    if path:
        _load_weights(run, ckpt, path, strict=True)
        log.info("resumed model weights from %s", path)
        run.resumed_from, ema_state = path, ckpt.get("ema_model")
        if not args.eval and "optimizer" in ckpt:
            run.optimizer.load_state_dict(ckpt["optimizer"])
            run.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
            args.start_epoch = int(ckpt["epoch"]) + 1
            if run.scaler is not None and ckpt.get("scaler"):
                run.scaler.load_state_dict(ckpt["scaler"])
    elif args.pretrain_model_path:
        ckpt = load_checkpoint(args.pretrain_model_path)
        _load_weights(run, ckpt, args.pretrain_model_path, strict=False)
        run.resumed_from = args.pretrain_model_path
    if args.use_ema:  # a copy of the loaded weights, or the checkpoint's own EMA
        run.ema = ModelEMA(run.model_without_ddp, args.ema_decay)
        if ema_state is not None:
            run.ema.load_state_dict(ema_state)


def _load_weights(run: Run, ckpt: dict, path: str, strict: bool) -> None:
    """Load ckpt['model']; when the tensors do not fit, say which config the checkpoint was trained
    with and how it differs from this run's (the full tensor list goes to info.txt)."""
    args = run.args
    from models.common.backbones.official_dino import convert_official_state  # an official DINO Swin/ConvNeXt file
    ckpt["model"], converted = convert_official_state(ckpt["model"], args.backbone, args.return_interm_indices)
    for line in converted:
        logging.getLogger("detr").info("%s: converted on load: %s", path, line)
    try:
        load_model_state(run.model_without_ddp, ckpt["model"], source=path, strict=strict,
                         ignore=None if strict else args.finetune_ignore)
    except CheckpointError as err:
        logging.getLogger("detr").info("full load error: %s", err, extra={FILE_ONLY: True})
        raise misfit_error(err, path, ckpt.get("args"), vars(args), strict) from None


def evaluate_once(run: Run) -> dict:
    """--eval: COCO metrics of the loaded weights (and, with --save_emca_weights, EMCA's fusion weights)."""
    args = run.args
    recorder = None
    if args.save_emca_weights:
        from models.dino.augdetr.emca_weights import EmcaWeightRecorder
        recorder = EmcaWeightRecorder(run.model_without_ddp, run.criterion.matcher)
    test_stats, _ = run.evaluate(emca_recorder=recorder)
    if recorder is not None:
        summary = recorder.summary()
        if run.main_proc:
            with open(os.path.join(args.output_dir, "emca_weights.json"), "w") as f:
                json.dump(summary, f, indent=2)
            logging.getLogger("detr").info("EMCA fusion weights (mean per encoder layer): %s", ", ".join(
                f"E{layer}={m:.3f}" for layer, m in zip(summary["enc_layers"], summary["mean"])))
    if run.main_proc:  # marked, so tools that read training epochs skip it
        append_log_record(run.log_path, {**{f"test_{k}": v for k, v in test_stats.items()}, **run.data_counts,
                                         "mode": "eval", "checkpoint": run.resumed_from, "debug": args.debug,
                                         "n_parameters": run.n_parameters})
    return test_stats


def _recover_missing_epoch(run: Run, previous: List[dict]) -> None:
    """A kill between an epoch's checkpoint and its log line loses that line: evaluate that epoch again."""
    epoch = run.args.start_epoch - 1
    missing = run.main_proc and epoch >= 0 and epoch not in {r.get("epoch") for r in previous}
    if not dist_utils.all_gather_object(missing)[0]:
        return
    logging.getLogger("detr").warning("log.txt has no line for epoch %d (the run stopped after its checkpoint); "
                                      "evaluating it again", epoch)
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
        logging.getLogger("detr").info(
            "training is complete: %d of %d epochs in %s, best AP %.4f, last AP %.4f; nothing to do (raise "
            "--options epochs=N to train longer)", args.start_epoch, args.epochs, args.output_dir,
            run.best["regular"], (last.get("test_coco_eval_bbox") or [-1.0])[0])
        return last
    _recover_missing_epoch(run, previous)
    tb_writer = None
    if args.tensorboard and run.main_proc:
        from torch.utils.tensorboard import SummaryWriter
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


PREDICTION_IMAGES = 4  # val images drawn in output_dir/predictions.png after training


def save_predictions_png(run: Run) -> str:
    """output_dir/predictions.png: the trained model's detections on the first val images, drawn by
    tools/draw.py (the same drawing as tools/inference.py)."""
    from tools.draw import save_prediction_grid
    dataset = run.loaders.dataset_val
    names = {c["id"]: c["name"] for c in run.base_ds.dataset.get("categories", [])}
    path = os.path.join(run.args.output_dir, "predictions.png")
    with torch.no_grad():
        save_prediction_grid(run.model_without_ddp, run.postprocessors, dataset,
                             range(min(PREDICTION_IMAGES, len(dataset))), path, names=names)
    logging.getLogger("detr").info("predicted boxes on %d val images: %s", min(PREDICTION_IMAGES, len(dataset)),
                                   path)
    return path


def run_epoch(run: Run, epoch: int, tb_writer=None) -> dict:
    """Train one epoch, checkpoint, evaluate (and the EMA), append the epoch's log record."""
    from datasets.loaders import seed_epoch
    from engine import train_one_epoch

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
    logging.getLogger("detr").info("epoch %d done in %.1fs: AP %.4f (best %.4f)", epoch, time.time() - t0, ap,
                                   run.best["regular"])
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
    <method> is --note (letters, digits, '-' kept) or the model's name."""
    method = re.sub(r"[^A-Za-z0-9-]+", "", args.note) or ("augdetr" if args.use_hae or args.use_emca else "dino")
    return f"detections_test-dev2017_{method}_results.json"


def write_test_dev(run: Run) -> dict:
    """--test: detections for every test-dev image, written by rank 0; returns what was written."""
    from engine import predict, write_coco_results
    args = run.args
    detections = predict(run.model, run.postprocessors, run.loaders.val, run.device, amp=args.amp, debug=args.debug)
    stats = {"test_dev_images": len(detections), "test_dev_results": test_dev_file_name(args)}
    if run.main_proc:
        stats["test_dev_detections"] = write_coco_results(
            detections, os.path.join(args.output_dir, stats["test_dev_results"]))
        append_log_record(run.log_path, {**stats, "mode": "test", "checkpoint": run.resumed_from})
        logging.getLogger("detr").info("wrote %d detections on %d test-dev images to %s; zip it and upload it "
                                       "to the COCO evaluation server", stats["test_dev_detections"],
                                       len(detections), stats["test_dev_results"])
    return stats


def user_error_types() -> tuple:
    """Exceptions that are the user's input (config, data, checkpoint, numerics, memory), not bugs."""
    from datasets.coco import DataError
    from engine import NonFiniteLossError, ResourceError
    from util.log_records import LogRecordError
    return (ConfigError, CheckpointError, DataError, NonFiniteLossError, ResourceError, LogRecordError)


def one_line(err: BaseException) -> str:
    """The user-facing line of `err`. A DataLoader worker re-raises the worker's exception with the
    whole worker traceback as its message; its last line holds the original message."""
    text = str(err).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = re.sub(r"^[\w.]+(Error|Exception): ", "", last)
    return " ".join(text.split()) or type(err).__name__


def cli(argv: Optional[List[str]] = None) -> int:
    """`python main.py`: known user errors print `error: <message>` to stderr and return 2;
    anything else (a bug) keeps its traceback."""
    try:
        args = build_args(argv)
        if args.print_config:
            print(f"# {args.config_file}, resolved (defaults: config/DINO/DINO_4scale.py)")
            print("\n".join(describe({k: getattr(args, k) for k in args.config_keys})))
            return 0
        main(args)
    except user_error_types() as err:
        message = one_line(err)
        log = logging.getLogger("detr")
        for h in log.handlers:  # keep the reason in info.txt
            if isinstance(h, logging.FileHandler):
                h.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None))
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
