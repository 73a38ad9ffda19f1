"""Where a run writes: `%j` / `%t` in --output_dir, and evaluation folders that never mix with a
training run's record."""
import os
import time
from typing import Mapping, Optional

from util.slconfig import ConfigError


def expand_output_dir(path: str, env: Mapping[str, str], now: Optional[float] = None,
                      job_fallback: bool = False) -> str:
    """`%j` -> the SLURM job id, `%t` -> the start time as YYYYmmdd-HHMMSS, `%%` -> `%`.

    `%j` outside a SLURM job is a ConfigError (a training run there could never be resumed under
    the same folder name), unless job_fallback: then it becomes `local-<start time>` (evaluations,
    as in the AugDETR reproduction's README commands, which use `R50-MS4-%j` outside SLURM too)."""
    out, i = [], 0
    while i < len(path):
        if path[i] != "%" or i + 1 == len(path):
            out.append(path[i])
            i += 1
            continue
        code = path[i + 1]
        if code == "j":
            job = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
            if not job and job_fallback:
                job = "local-" + time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
            if not job:
                raise ConfigError(f"--output_dir {path}: %j is the SLURM job id, but SLURM_JOB_ID is not set "
                                  f"(not inside a SLURM job), so a rerun could not resume this training; use %t "
                                  f"for the start time or a plain name")
            out.append(job)
        elif code == "t":
            out.append(time.strftime("%Y%m%d-%H%M%S", time.localtime(now)))
        elif code == "%":
            out.append("%")
        else:
            raise ConfigError(f"--output_dir {path}: unknown pattern %{code}; use %j (SLURM job id), "
                              f"%t (start time) or %% (a literal %)")
        i += 2
    return "".join(out)


def holds_training_run(folder: str) -> bool:
    """True when `folder` has a training run's files (checkpoints or its config dump)."""
    if not os.path.isdir(folder):
        return False
    names = os.listdir(folder)
    return any(n.startswith("checkpoint") and n.endswith(".pth") for n in names) or "config_cfg.py" in names


def eval_output_dir(explicit: Optional[str], default: str, weights: str, debug: bool) -> str:
    """The folder of an --eval / --test run.

    An explicit --output_dir is used as given unless it holds a training run; otherwise (and
    without one) the results go to `<folder>/eval/<checkpoint stem>[-debug]`, where folder is the
    explicit one, else the checkpoint's own folder. So a training run's log.txt and config
    dumps are never touched, and a --debug subset never mixes with a full evaluation."""
    if explicit and not holds_training_run(explicit):
        return explicit
    base = explicit or os.path.dirname(weights) or default
    stem = os.path.splitext(os.path.basename(weights))[0] + ("-debug" if debug else "")
    return os.path.join(base, "eval", stem)
