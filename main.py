"""Train / evaluate DINO and AugDETR.

Python API: `build_args(argv)` returns the resolved namespace (config file
loaded, --options merged, every config key copied onto it, CLI precedence
applied); `main(args)` runs training or evaluation. `python main.py --help`
lists every flag with examples.
"""
import argparse
import json
import logging
import os
import random
import re
import sys
import time
from typing import List, Optional

import numpy as np
import torch

from util import dist as dist_utils
from util.checkpoint import (CheckpointError, args_to_dict, find_resume_checkpoint, load_checkpoint,
                             load_model_state, remove_stale_temp_files, save_checkpoint)
from util.logger import setup_logger
from util.optim import ModelEMA, build_lr_scheduler, build_optimizer
from util.slconfig import ConfigError, DictAction, SLConfig

DEFAULT_CONFIG = "config/DINO/DINO_synthetic.py"

# Flags that are also config keys: argparse default None so that "not given" is
# visible; resolved value = CLI flag if given, else config/--options, else this.
SHARED_DEFAULTS = {"dataset_file": "coco", "fix_size": False, "use_hae": False, "num_hae_layers": 2,
                   "use_emca": False, "eval_backend": "pycocotools"}

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
  # 8 GPUs
  torchrun --nproc_per_node=8 main.py -c config/DINO/DINO_4scale.py --coco_path /data/coco
"""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="main.py", description="DINO / AugDETR training and evaluation", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config_file", "-c", default=DEFAULT_CONFIG,
                   help=f"Python config file (default {DEFAULT_CONFIG})")
    p.add_argument("--options", nargs="+", action=DictAction, metavar="KEY=VALUE",
                   help="override config keys: key=value (int/float/true/false/none/comma list/str; "
                        "dotted keys for nested dicts); unknown keys and wrong types are errors")
    g = p.add_argument_group("data")
    g.add_argument("--dataset_file", default=None,
                   help="'coco' or 'synthetic' (default: config value, else 'coco')")
    g.add_argument("--coco_path", default=None,
                   help="COCO root with train2017/ val2017/ annotations/ (required for dataset_file=coco)")
    g.add_argument("--fix_size", action="store_true", default=None,
                   help="train transform = flip + one fixed resize (default: config value, else off)")
    g.add_argument("--num_workers", type=int, default=2, help="DataLoader worker processes (default 2)")
    g = p.add_argument_group("run")
    g.add_argument("--output_dir", default=None,
                   help="where logs and checkpoints go (default logs/<config file stem>)")
    g.add_argument("--device", default="auto", help="'auto' (cuda if available, else cpu), 'cpu', 'cuda'")
    g.add_argument("--seed", type=int, default=42, help="random seed; each process uses seed + rank")
    g.add_argument("--resume", default="",
                   help="checkpoint to resume from (wins over auto-resume from output_dir)")
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
    g.add_argument("--save_log", action="store_true", help="accepted for DINO compatibility (logs always go to info.txt)")
    g.add_argument("--note", default="", help="free text saved with the args")
    g.add_argument("--skip_nonfinite", action="store_true",
                   help="skip optimizer steps whose loss is NaN/inf (counted as train_nonfinite_steps) "
                        "instead of stopping")
    g.add_argument("--tensorboard", action="store_true",
                   help="write per-iteration losses/lr and per-epoch AP to output_dir/tensorboard")
    g.add_argument("--eval_backend", default=None, choices=["pycocotools", "faster_coco_eval"],
                   help="COCO evaluation library (default: config value, else pycocotools)")
    g = p.add_argument_group("AugDETR")
    g.add_argument("--use_hae", action="store_true", default=None, help="Hybrid Attention Encoder")
    g.add_argument("--num_hae_layers", "--num_hybrid_layers", dest="num_hae_layers", type=int, default=None,
                   metavar="N", help="number of hybrid encoder layers (default: config value, else 2)")
    g.add_argument("--use_emca", action="store_true", default=None, help="Encoder-Mixing Cross-Attention")
    g.add_argument("--save_emca_weights", action="store_true",
                   help="with --eval (and --use_emca): record the last decoder layer's EMCA fusion weights of the "
                        "matched queries and write their per-encoder-layer mean/std to output_dir/emca_weights.json")
    g = p.add_argument_group("distributed")
    g.add_argument("--find_unused_params", action="store_true", help="DDP find_unused_parameters=True")
    g.add_argument("--world_size", type=int, default=1, help="set from WORLD_SIZE/SLURM_NTASKS when launched")
    g.add_argument("--dist_url", default="env://", help="process-group init method (default env://)")
    g.add_argument("--rank", type=int, default=0, help="set from RANK/SLURM_PROCID when launched")
    g.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=None,
                   help="set from LOCAL_RANK/SLURM_LOCALID (accepted from old launchers)")
    return p


def build_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse argv, load the config, merge --options, copy config keys onto args (CLI wins)."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    cfg = SLConfig.fromfile(args.config_file)
    dests = {a.dest for a in parser._actions}
    for key in args.options or {}:
        root = key.split(".")[0]
        if root in dests and root not in cfg:
            raise ConfigError(f"{root!r} is a command-line option, not a config key: pass --{root} "
                              f"instead of --options {key}=...")
    cfg.merge_from_options(args.options or {})
    for key in cfg.keys():
        if key in dests and key not in SHARED_DEFAULTS:
            raise ConfigError(f"{args.config_file}: key {key!r} is a command-line option only; "
                              f"remove it from the config and pass --{key}")
        if key in SHARED_DEFAULTS and getattr(args, key) is not None:
            cfg[key] = getattr(args, key)  # the CLI wins; keep the dumped config in sync
        setattr(args, key, cfg.to_dict()[key] if isinstance(cfg[key], dict) else _plain(cfg[key]))
    for key, default in SHARED_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    args.config_keys = list(cfg.keys())
    if getattr(args, "dn_scalar", None) is not None:
        args.dn_number = args.dn_scalar  # DN-DETR's name for the DN query budget
    if args.output_dir is None:
        args.output_dir = os.path.join("logs", os.path.splitext(os.path.basename(args.config_file))[0])
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.test:
        args.eval = True  # no training; the test split replaces the val split
    if args.dataset_file == "coco" and not args.coco_path:
        raise ConfigError("dataset_file='coco' needs --coco_path /path/to/coco "
                          "(or use -c config/DINO/DINO_synthetic.py for the synthetic dataset)")
    return args


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """Deterministic per-(seed, rank, epoch) seed so a resumed epoch replays exactly."""
    return (seed * 1_000_003 + rank * 10_007 + epoch * 101) % 2**31


def _worker_init(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive python/numpy from it
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def _read_log(path: str) -> List[dict]:
    """The JSON records of log.txt; unreadable lines (e.g. a half-written last line after a
    kill) are skipped."""
    records = []
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    records.append(record)
    return records


def _best_logged_ap(records: List[dict], key: str) -> float:
    """Best AP (first of the 12 COCO numbers) under `key` in log.txt records; -1 when none."""
    return max((r[key][0] for r in records if r.get(key)), default=-1.0)


def _append_log(path: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def main(args: argparse.Namespace):
    """Run training (or evaluation with --eval); returns the last stats dict."""
    dist_utils.init_distributed_mode(args)
    try:
        return _run(args)
    finally:
        dist_utils.cleanup()


def _build_loaders(args, datasets_mod):
    """Train/val datasets and loaders; the train sampler/loader generators are reseeded per epoch."""
    from torch.utils.data import (BatchSampler, DataLoader, DistributedSampler, RandomSampler,
                                  SequentialSampler)
    from util.misc import collate_fn

    # Each node's local rank 0 builds (and, for the synthetic data, generates) the datasets before the
    # other ranks of that node, so concurrent processes never race on one dataset folder.
    first = args.local_rank in (0, None)
    if args.distributed and not first:
        dist_utils.barrier()
    dataset_val = datasets_mod.build_dataset("test" if args.test else "val", args)
    dataset_train = None if args.eval else datasets_mod.build_dataset("train", args)
    if args.distributed and first:
        dist_utils.barrier()
    sampler_gen, loader_gen = torch.Generator(), torch.Generator()
    common = dict(collate_fn=collate_fn, num_workers=args.num_workers, worker_init_fn=_worker_init)
    val_sampler = (DistributedSampler(dataset_val, shuffle=False) if args.distributed
                   else SequentialSampler(dataset_val))
    loader_val = DataLoader(dataset_val, batch_size=args.val_batch_size, sampler=val_sampler,
                            drop_last=False, **common)
    loader_train = train_sampler = None
    if not args.eval:
        train_sampler = (DistributedSampler(dataset_train, shuffle=True, seed=args.seed) if args.distributed
                         else RandomSampler(dataset_train, generator=sampler_gen))
        batch_sampler = BatchSampler(train_sampler, args.batch_size, drop_last=True)
        if len(batch_sampler) == 0:
            raise ConfigError(f"the train set has {len(dataset_train)} images per process, fewer than "
                              f"batch_size={args.batch_size}; lower batch_size")
        loader_train = DataLoader(dataset_train, batch_sampler=batch_sampler, generator=loader_gen, **common)
    return loader_train, train_sampler, loader_val, dataset_val, (sampler_gen, loader_gen)


def _run(args):
    import datasets as datasets_mod
    from engine import evaluate, train_one_epoch
    from models import build_model

    main_proc = dist_utils.is_main_process()
    if main_proc:
        os.makedirs(args.output_dir, exist_ok=True)
    log = setup_logger(args.output_dir, args.rank)
    log.info("command: %s", " ".join(sys.argv))
    if main_proc:
        SLConfig({k: getattr(args, k) for k in args.config_keys}, filename=args.config_file).dump(
            os.path.join(args.output_dir, "config_cfg.py"))
        with open(os.path.join(args.output_dir, "config_args_all.json"), "w") as f:
            json.dump(args_to_dict(args), f, indent=2)
    seed_all(args.seed + args.rank)
    device = torch.device(args.device)

    model, criterion, postprocessors = build_model(args)
    model.to(device)
    if isinstance(criterion, torch.nn.Module):
        criterion.to(device)
    model_without_ddp = model
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("number of trainable params: %d", n_parameters)
    optimizer = build_optimizer(model_without_ddp, args)
    if args.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=args.find_unused_params)

    loader_train, train_sampler, loader_val, dataset_val, (sampler_gen, loader_gen) = _build_loaders(
        args, datasets_mod)
    base_ds = datasets_mod.get_coco_api_from_dataset(dataset_val)
    # boxes dropped while reading the JSONs (no area after clipping); skipped images are counted per epoch
    data_counts = {"test_dropped_boxes": int(getattr(dataset_val, "num_degenerate_boxes", 0))}
    if loader_train is not None:
        data_counts["train_dropped_boxes"] = int(getattr(loader_train.dataset, "num_degenerate_boxes", 0))
    log.info("data: %s", ", ".join(f"{k}={v}" for k, v in data_counts.items()))
    lr_scheduler, per_iter = build_lr_scheduler(optimizer, args, len(loader_train) if loader_train else 1)
    scaler = torch.amp.GradScaler("cuda") if args.amp and device.type == "cuda" else None

    if main_proc:
        for stale in remove_stale_temp_files(args.output_dir):
            log.warning("removed %s: an unfinished checkpoint write (the run was killed while saving)", stale)
    resume = args.resume or find_resume_checkpoint(args.output_dir)
    if resume and not args.resume:
        log.info("auto-resume: found %s in output_dir (pass --resume to choose another)", resume)
    ema = None
    if resume:
        ckpt = load_checkpoint(resume)
        load_model_state(model_without_ddp, ckpt["model"], source=resume, strict=True)
        log.info("resumed model weights from %s", resume)
        if args.use_ema:
            ema = ModelEMA(model_without_ddp, args.ema_decay)
            if "ema_model" in ckpt:
                ema.load_state_dict(ckpt["ema_model"])
        if not args.eval and "optimizer" in ckpt:
            optimizer.load_state_dict(ckpt["optimizer"])
            lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
            args.start_epoch = int(ckpt["epoch"]) + 1
            if scaler is not None and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
    elif args.pretrain_model_path:
        ckpt = load_checkpoint(args.pretrain_model_path)
        load_model_state(model_without_ddp, ckpt["model"], source=args.pretrain_model_path, strict=False,
                         ignore=args.finetune_ignore)
    if args.use_ema and ema is None:
        ema = ModelEMA(model_without_ddp, args.ema_decay)

    eval_kwargs = dict(output_dir=args.output_dir, amp=args.amp, eval_backend=args.eval_backend,
                       save_results=args.save_results, debug=args.debug)
    log_path = os.path.join(args.output_dir, "log.txt")
    if args.test:
        if not (resume or args.pretrain_model_path):
            raise ConfigError("--test needs trained weights: pass --resume CHECKPOINT")
        return _write_test_dev(args, model, postprocessors, loader_val, device, log_path)
    if args.eval:
        recorder = None
        if args.save_emca_weights:
            from models.dino.emca_analysis import EmcaWeightRecorder
            recorder = EmcaWeightRecorder(model_without_ddp, criterion.matcher)
        test_stats, _ = evaluate(model, criterion, postprocessors, loader_val, base_ds, device,
                                 emca_recorder=recorder, **eval_kwargs)
        if recorder is not None:
            summary = recorder.summary()
            if main_proc:
                with open(os.path.join(args.output_dir, "emca_weights.json"), "w") as f:
                    json.dump(summary, f, indent=2)
                log.info("EMCA fusion weights (mean per encoder layer): %s",
                         ", ".join(f"E{l}={m:.3f}" for l, m in zip(summary["enc_layers"], summary["mean"])))
        if main_proc:
            _append_log(log_path, {**{f"test_{k}": v for k, v in test_stats.items()}, **data_counts,
                                   "n_parameters": n_parameters})
        return test_stats

    tb_writer = None
    if args.tensorboard and main_proc:
        from torch.utils.tensorboard import SummaryWriter
        tb_writer = SummaryWriter(os.path.join(args.output_dir, "tensorboard"))
    previous = _read_log(log_path)
    best_ap = _best_logged_ap(previous, "test_coco_eval_bbox")
    best_ema_ap = _best_logged_ap(previous, "ema_test_coco_eval_bbox")
    log_stats = {}
    # a kill between an epoch's checkpoint and its log line loses that line: evaluate it again
    missing = main_proc and args.start_epoch > 0 and (args.start_epoch - 1) not in {r.get("epoch") for r in previous}
    if dist_utils.all_gather_object(missing)[0]:
        log.warning("log.txt has no line for epoch %d (the run stopped after its checkpoint); evaluating it "
                    "again", args.start_epoch - 1)
        test_stats, _ = evaluate(model, criterion, postprocessors, loader_val, base_ds, device, **eval_kwargs)
        best_ap = max(best_ap, test_stats["coco_eval_bbox"][0])
        if main_proc:
            _append_log(log_path, {**{f"test_{k}": v for k, v in test_stats.items()}, **data_counts,
                                   "epoch": args.start_epoch - 1, "recovered": True, "n_parameters": n_parameters})
    try:
        for epoch in range(args.start_epoch, args.epochs):
            t0 = time.time()
            s = epoch_seed(args.seed, args.rank, epoch)
            seed_all(s)
            sampler_gen.manual_seed(epoch_seed(args.seed, 0, epoch))
            loader_gen.manual_seed(s)
            if args.distributed:
                train_sampler.set_epoch(epoch)
            train_stats = train_one_epoch(
                model, criterion, loader_train, optimizer, device, epoch, max_norm=args.clip_max_norm,
                amp=args.amp, scaler=scaler, lr_scheduler=lr_scheduler if per_iter else None,
                ema=ema if ema is not None and epoch >= args.ema_epoch else None, debug=args.debug,
                skip_nonfinite=args.skip_nonfinite, tb_writer=tb_writer)
            if not per_iter:
                lr_scheduler.step()
            ckpt = {"model": model_without_ddp.state_dict(), "optimizer": optimizer.state_dict(),
                    "lr_scheduler": lr_scheduler.state_dict(), "epoch": epoch, "args": args_to_dict(args),
                    "scaler": scaler.state_dict() if scaler is not None else None}
            if ema is not None:
                ckpt["ema_model"] = ema.state_dict()
            if main_proc:
                save_checkpoint(ckpt, os.path.join(args.output_dir, "checkpoint.pth"))
                if (epoch + 1) % args.lr_drop == 0 or (epoch + 1) % args.save_checkpoint_interval == 0:
                    save_checkpoint(ckpt, os.path.join(args.output_dir, f"checkpoint{epoch:04}.pth"))
            test_stats, _ = evaluate(model, criterion, postprocessors, loader_val, base_ds, device,
                                     **eval_kwargs)
            ap = test_stats["coco_eval_bbox"][0]
            if ap > best_ap:
                best_ap = ap
                if main_proc:
                    save_checkpoint({k: v for k, v in ckpt.items() if k != "ema_model"},
                                    os.path.join(args.output_dir, "checkpoint_best_regular.pth"))
            log_stats = {**{f"train_{k}": v for k, v in train_stats.items()},
                         **{f"test_{k}": v for k, v in test_stats.items()}}
            if ema is not None:
                ema_stats, _ = evaluate(ema.module, criterion, postprocessors, loader_val, base_ds, device,
                                        **{**eval_kwargs, "save_results": False})
                log_stats.update({f"ema_test_{k}": v for k, v in ema_stats.items()})
                ema_ap = ema_stats["coco_eval_bbox"][0]
                if ema_ap > best_ema_ap:
                    best_ema_ap = ema_ap
                    if main_proc:  # the EMA weights as "model", so --resume / inference load them directly
                        save_checkpoint({"model": ckpt["ema_model"], "epoch": epoch, "args": ckpt["args"]},
                                        os.path.join(args.output_dir, "checkpoint_best_ema.pth"))
                log_stats["best_ema_ap"] = best_ema_ap
            log_stats.update(data_counts)
            log_stats.update(epoch=epoch, n_parameters=n_parameters, best_ap=best_ap,
                             now_time=time.strftime("%Y-%m-%d %H:%M:%S"), epoch_time=time.time() - t0)
            if main_proc:
                _append_log(log_path, log_stats)
            if tb_writer is not None:
                tb_writer.add_scalar("test/AP", ap, epoch)
                tb_writer.add_scalar("test/AP50", test_stats["coco_eval_bbox"][1], epoch)
            log.info("epoch %d done in %.1fs: AP %.4f (best %.4f)", epoch, time.time() - t0, ap, best_ap)
    finally:
        if tb_writer is not None:
            tb_writer.close()
    return log_stats


def test_dev_file_name(args: argparse.Namespace) -> str:
    """COCO's evaluation server wants detections_test-dev2017_<method>_results.json (zipped);
    <method> is --note (letters, digits, '-' kept) or the model's name."""
    method = re.sub(r"[^A-Za-z0-9-]+", "", args.note) or ("augdetr" if args.use_hae or args.use_emca else "dino")
    return f"detections_test-dev2017_{method}_results.json"


def _write_test_dev(args, model, postprocessors, loader, device, log_path) -> dict:
    """--test: detections for every test-dev image, written by rank 0; returns what was written."""
    from engine import predict, write_coco_results
    detections = predict(model, postprocessors, loader, device, amp=args.amp, debug=args.debug)
    stats = {"test_dev_images": len(detections), "test_dev_results": test_dev_file_name(args)}
    if dist_utils.is_main_process():
        stats["test_dev_detections"] = write_coco_results(
            detections, os.path.join(args.output_dir, stats["test_dev_results"]))
        _append_log(log_path, stats)
        logging.getLogger("detr").info("wrote %d detections on %d test-dev images to %s; zip it and upload it "
                                       "to the COCO evaluation server", stats["test_dev_detections"],
                                       len(detections), stats["test_dev_results"])
    return stats


def user_error_types() -> tuple:
    """Exceptions that are the user's input (config, data, checkpoint, numerics, memory), not bugs."""
    from datasets.coco import DataError
    from engine import NonFiniteLossError, ResourceError
    return (ConfigError, CheckpointError, DataError, NonFiniteLossError, ResourceError)


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
        main(build_args(argv))
    except user_error_types() as err:
        message = one_line(err)
        log = logging.getLogger("detr")
        if any(isinstance(h, logging.FileHandler) for h in log.handlers):  # keep the reason in info.txt
            for h in log.handlers:
                if isinstance(h, logging.FileHandler):
                    h.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None))
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
