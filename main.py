"""Train / evaluate a detector of this project (DINO, with AugDETR's and AlignDETR's options).

Python API: `build_args(argv)` returns the resolved namespace (command-line flags plus every checked
config key, see engine/config.py); `main(args)` runs training, evaluation (--eval) or test-dev
prediction (--test). `python main.py --help` lists every flag with examples; `python main.py -c CONFIG
--print_config` lists every config key.
"""
import argparse
import gc
import logging
import os
import sys
from typing import List, Optional

import models
from datasets import DataError
from engine import NonFiniteLossError, ResourceError
from engine.cli import (
    DEFAULT_CONFIG,
    add_config_arguments,
    add_setup_note,
    add_threads_argument,
    load_args_config,
    resolve_device,
    start_threads,
)
from engine.config import describe
from engine.run import build_run, hold_output_dir, resume, settle_output_dir
from engine.training import evaluate_once, train, write_test_dev
from util import dist as dist_utils
from util.checkpoint import CheckpointError, missing_checkpoint_error, peek_checkpoint, resume_candidates
from util.cli import INTERRUPTED, USER_ERROR, ArgumentParser, one_line
from util.cpu_threads import install as install_threads
from util.disk import DiskWriteError
from util.log_records import LogRecordError
from util.logger import LOGGER_NAME
from util.preemption import EXIT_PREEMPTED, WATCH, Preempted
from util.rank_watch import PeerLostError
from util.run_lock import RunLockError
from util.slconfig import ConfigError

EPILOG = """examples:
  # tiny DINO on the built-in synthetic dataset (CPU, minutes)
  python main.py
  # DINO 4-scale R50 on COCO (the AugDETR README command)
  python main.py --output_dir logs/DINO/R50-MS4 -c config/DINO/DINO_4scale.py --coco_path /data/coco \\
      --options dn_scalar=100 embed_init_tgt=TRUE dn_label_coef=1.0 dn_bbox_coef=1.0 use_ema=False \\
      dn_box_noise_scale=1.0 --use_hae --use_emca
  # the same model from its config file
  python main.py -c config/AugDETR/AugDETR_4scale.py --coco_path /data/coco --output_dir logs/augdetr4
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
    p = ArgumentParser(prog="main.py", description="Training and evaluation of this project's detectors",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p, None, f"Python config file (default {DEFAULT_CONFIG}; --eval / --test without -c: the "
                                  f"config stored in the checkpoint, --options and flags on top)")
    p.add_argument("--print_config", action="store_true",
                   help="print every resolved config key with its value and meaning, then exit")
    data = p.add_argument_group("data paths")
    data.add_argument("--coco_path", default=None,
                      help="COCO root with train2017/ val2017/ annotations/ (required for dataset_file=coco)")
    data.add_argument("--num_workers", type=int, default=2, help="DataLoader worker processes (default 2)")
    _add_run_flags(p.add_argument_group("run"))
    recorders = p.add_argument_group("evaluation recordings (with --eval)")
    for flag, recorder in models.eval_recorders().items():
        recorders.add_argument(f"--{flag}", action="store_true", help=recorder.help)
    _add_distributed_flags(p.add_argument_group("distributed"))
    return p


def _add_run_flags(g) -> None:
    g.add_argument("--output_dir", default=None,
                   help="where logs and checkpoints go (default logs/<config file stem>); %%j = SLURM job id, "
                        "%%t = start time; --eval/--test write to <folder>/eval/<checkpoint stem> unless given "
                        "a folder that holds no training run")
    g.add_argument("--device", default="auto", help="'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:N'")
    add_threads_argument(g)
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
    g.add_argument("--per_class", action="store_true", default=None,
                   help="print the per-class AP table after --eval and training (default: when the data has at most "
                        "100 classes); metrics.json always holds it")
    g.add_argument("--no_per_class", dest="per_class", action="store_false", help="do not print the per-class table")
    g.add_argument("--debug", action="store_true", help="stop train/eval loops after a few iterations")
    g.add_argument("--save_log", action="store_true",
                   help="accepted for DINO compatibility (logs always go to info.txt)")
    g.add_argument("--note", default="", help="free text saved with the args")
    g.add_argument("--skip_nonfinite", action="store_true",
                   help="skip optimizer steps whose loss is NaN/inf (counted as train_nonfinite_steps) "
                        "instead of stopping")
    g.add_argument("--tensorboard", action="store_true",
                   help="write per-iteration losses/lr and per-epoch AP to output_dir/tensorboard")


def _add_distributed_flags(g) -> None:
    g.add_argument("--find_unused_params", action="store_true", help="DDP find_unused_parameters=True")
    g.add_argument("--world_size", type=int, default=1, help="set from WORLD_SIZE/SLURM_NTASKS when launched")
    g.add_argument("--dist_url", default="env://", help="process-group init method (default env://)")
    g.add_argument("--rank", type=int, default=0, help="set from RANK/SLURM_PROCID when launched")
    g.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=None,
                   help="set from LOCAL_RANK/SLURM_LOCALID (accepted from old launchers)")


def build_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse argv, check the checkpoint files named, load and check the config (file < --options < config
    flags; --eval / --test: the checkpoint's stored config unless -c is given), copy its keys onto args."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    args.config_given = args.config_file is not None
    args.config_file = args.config_file or DEFAULT_CONFIG
    args.output_dir_given = args.output_dir is not None
    if args.output_dir is None:
        args.output_dir = os.path.join("logs", os.path.splitext(os.path.basename(args.config_file))[0])
    if args.test:
        args.eval = True  # no training; the test split replaces the val split
    for flag in ("resume", "pretrain_model_path"):  # before anything is read or built
        path = vars(args)[flag]
        if path and not os.path.isfile(path):
            raise missing_checkpoint_error(path, f"--{flag}")
    args = load_args_config(args, parser)
    args.device = resolve_device(args.device)
    _check_run_flags(args)
    return args


def _check_run_flags(args) -> None:
    """Flag combinations and environment values that cannot work, as one-line errors."""
    env = os.environ.get("MSDA_BACKEND")
    backends = models.msda_backends()
    if env and env not in backends:
        raise ConfigError(f"MSDA_BACKEND={env!r} is not one of {', '.join(backends)}; unset it or pick one")
    for flag, recorder in models.eval_recorders().items():
        if vars(args)[flag]:
            problem = recorder.requires(args) or (None if args.eval else f"--{flag} records during an evaluation: "
                                                                         f"add --eval")
            if problem:
                raise ConfigError(problem)


def main(args: argparse.Namespace):
    """Run training (or evaluation with --eval, test-dev with --test); returns the last stats dict.

    Preemption signals (util/preemption.py) are handled while it runs: the run checkpoints and raises
    Preempted. In a distributed run, an error that came from a peer that is gone becomes a one-line
    PeerLostError naming that rank (util/rank_watch.py)."""
    dist_utils.init_distributed_mode(args)
    add_setup_note(args, start_threads(args.threads, logging.getLogger(LOGGER_NAME).info)[1])
    run = lock = None
    WATCH.install()
    try:
        settle_output_dir(args)
        lock = hold_output_dir(args)
        run = build_run(args, lock)
        resume(run)
        if args.test:
            result = write_test_dev(run)
        elif args.eval:
            result = evaluate_once(run)
        else:
            result = train(run)
        dist_utils.leave()
        return result
    except Preempted:
        dist_utils.leave()  # every rank stops at the same iteration: not a failure the others must report
        raise
    except BaseException as err:
        explained = dist_utils.explain_failure(err)
        dist_utils.leave(reason=one_line(explained) if isinstance(explained, Exception) else type(err).__name__)
        if explained is err:
            raise
        raise explained from err
    finally:
        WATCH.restore()
        if lock is not None:
            lock.release()
        # DDP's reducer holds the process group. Freed last, its destructor joins gloo's worker
        # threads while holding the GIL, which a worker may wait for to free a gathered tensor: a
        # deadlock at exit (seen in 2 of 7 runs of tests/test_distributed.py on torch 2.11). So the
        # model goes first, and the group with destroy_process_group, which releases the GIL.
        run = None
        install_threads(None)
        if dist_utils.is_dist():
            gc.collect()
        dist_utils.cleanup()


def user_error_types() -> tuple:
    """Exceptions that are the user's input or the machine's state (config, data, checkpoint, numerics, memory,
    a full disk, a folder in use, a lost peer), not bugs."""
    return (ConfigError, CheckpointError, DataError, NonFiniteLossError, ResourceError, LogRecordError,
            DiskWriteError, RunLockError, PeerLostError)


def cli(argv: Optional[List[str]] = None) -> int:
    """`python main.py`: known user errors print `main.py: error: <message>` to stderr and return 2 (the style
    of argparse and the tools); a preemption signal (the run checkpointed) prints `preempted: <message>` and
    returns EXIT_PREEMPTED (75); Ctrl-C prints one line saying how to resume and returns 130; anything else
    (a bug) keeps its traceback."""
    args = None
    try:
        args = build_args(argv)
        if args.print_config:
            defaults = os.path.relpath(models.detector(args.modelname).defaults_file, os.path.dirname(__file__))
            print(f"# {args.config_file}, resolved (modelname={args.modelname!r}; defaults: {defaults})")
            print("\n".join(describe({k: getattr(args, k) for k in args.config_keys})))
            return 0
        main(args)
    except Preempted as stop:
        _report(f"{one_line(stop)} (exit status {EXIT_PREEMPTED})", "preempted", logging.WARNING)
        return EXIT_PREEMPTED
    except user_error_types() as err:
        _report(one_line(err), "main.py: error", logging.ERROR)
        return USER_ERROR
    except KeyboardInterrupt:
        print(f"\n{interrupted_line(args, argv if argv is not None else sys.argv[1:])}", file=sys.stderr)
        return INTERRUPTED
    return 0


def _report(message: str, prefix: str, level: int) -> None:
    """`prefix: message` on stderr, and the message in info.txt when the run got that far."""
    log = logging.getLogger(LOGGER_NAME)
    for h in log.handlers:
        if isinstance(h, logging.FileHandler):
            h.handle(log.makeRecord(log.name, level, __file__, 0, message, None, None))
    print(f"{prefix}: {message}", file=sys.stderr)


def interrupted_line(args: Optional[argparse.Namespace], argv: List[str]) -> str:
    """What to do after Ctrl-C: the same command resumes from the newest checkpoint of output_dir (named with
    its epoch), or there is none yet."""
    if args is None or args.eval:
        return "interrupted (Ctrl-C) before training started; nothing to resume"
    found = resume_candidates(args.output_dir)
    command = " ".join(["python main.py", *resume_argv(argv, args.output_dir)])
    if not found:
        return f"interrupted (Ctrl-C) before the first checkpoint; `{command}` starts again"
    epoch = peek_checkpoint(found[0]).get("epoch")
    done = f" (epoch {epoch} done)" if isinstance(epoch, int) else ""
    return f"interrupted (Ctrl-C); to resume from {found[0]}{done}, run the same command: `{command}`"


def resume_argv(argv: List[str], output_dir: str) -> List[str]:
    """argv with --output_dir set to the folder the run used (its %j / %t expanded), so it auto-resumes."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == "--output_dir":
            skip = True
        elif not token.startswith("--output_dir="):
            out.append(token)
    return [*out, "--output_dir", output_dir]


if __name__ == "__main__":
    sys.exit(cli())
