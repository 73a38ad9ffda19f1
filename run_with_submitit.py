"""Submit main.py to SLURM with submitit (optional dependency: pip install submitit).

    python run_with_submitit.py --nodes 2 --ngpus 8 --timeout 4320 --partition gpu --job_dir logs/%j \
        -c config/DINO/DINO_4scale.py --coco_path /data/coco --use_hae --use_emca --options dn_scalar=100 ...

Every main.py flag passes through. One task per GPU; each task finds its rank in
SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID (util/dist.py) and MASTER_ADDR / MASTER_PORT
are set here from the job's first node. --output_dir defaults to the job folder, so a
requeued job auto-resumes from its checkpoint.pth.

Preemption and the time limit: submitit asks SLURM for SIGUSR2 90 s before the end
(`--signal=USR2@90`) and requeues the job from its handler of that signal. While main.py
trains, its own handler (util/preemption.py) takes the signal first: the run finishes the
iteration, writes a mid-epoch checkpoint and raises Preempted; the Trainer then hands the
signal to submitit's handler, which requeues the job (rank 0) and exits. The requeued job
continues from that checkpoint, mid-epoch.
"""
import argparse
import os
from typing import List, Optional

from util.cli import ArgumentParser, fail, run_guarded

PROG = "run_with_submitit.py"


def get_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=True)
    p.add_argument("--ngpus", type=int, default=8, help="GPUs (tasks) per node (default 8)")
    p.add_argument("--nodes", type=int, default=1, help="number of nodes (default 1)")
    p.add_argument("--timeout", type=int, default=2880, help="job time limit in minutes (default 2880)")
    p.add_argument("--partition", default=None, help="SLURM partition")
    p.add_argument("--job_dir", default="logs/submitit/%j", help="submitit folder; %%j = job id")
    p.add_argument("--cpus_per_task", type=int, default=10, help="CPU cores per task (default 10)")
    p.add_argument("--mem_gb", type=int, default=None, help="memory per node in GB (default: partition's)")
    p.add_argument("--comment", default=None, help="SLURM comment")
    p.add_argument("--master_port", type=int, default=29500, help="rendezvous port on the first node")
    return p


class Trainer:
    """Picklable job body: sets the rendezvous address, then runs main.main in this task."""

    def __init__(self, main_argv: List[str], master_port: int):
        self.main_argv = main_argv
        self.master_port = master_port

    def __call__(self):
        import submitit

        env = submitit.JobEnvironment()
        os.environ.setdefault("MASTER_ADDR", env.hostnames[0])
        os.environ.setdefault("MASTER_PORT", str(self.master_port))
        import main
        from util.preemption import Preempted
        argv = list(self.main_argv)
        if "--output_dir" not in argv:
            argv += ["--output_dir", str(env.paths.folder).replace("%j", str(env.job_id))]
        try:
            return main.main(main.build_args(argv))
        except Preempted as stop:  # the checkpoint is written: now submitit's own handler requeues the job
            stop.hand_over()
            raise

    def checkpoint(self):
        """On preemption/timeout: requeue the same command (main.py auto-resumes from output_dir)."""
        import submitit
        return submitit.helpers.DelayedSubmission(Trainer(self.main_argv, self.master_port))


def main(argv: Optional[List[str]] = None):
    opts, main_argv = get_parser().parse_known_args(argv)
    if opts.ngpus < 1 or opts.nodes < 1:
        fail(PROG, "--ngpus and --nodes must be >= 1")
    try:
        import submitit
    except ImportError:
        fail(PROG, "submitit is not installed; run `pip install submitit`")
    import main as main_mod
    # fail here, not on the cluster, on a bad config or flag
    run_guarded(PROG, lambda: main_mod.build_args(main_argv), main_mod.user_error_types())
    executor = submitit.AutoExecutor(folder=opts.job_dir, slurm_max_num_timeout=30)
    params = dict(gpus_per_node=opts.ngpus, tasks_per_node=opts.ngpus, cpus_per_task=opts.cpus_per_task,
                  nodes=opts.nodes, timeout_min=opts.timeout, name="augdetr")
    if opts.mem_gb:
        params["mem_gb"] = opts.mem_gb
    if opts.partition:
        params["slurm_partition"] = opts.partition
    if opts.comment:
        params["slurm_comment"] = opts.comment
    executor.update_parameters(**params)
    job = executor.submit(Trainer(main_argv, opts.master_port))
    print(f"submitted job {job.job_id}; logs in {opts.job_dir}")
    return job


if __name__ == "__main__":
    main()
