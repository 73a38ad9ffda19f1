"""scripts/*.sh launchers (syntax, usage errors, one end-to-end run) and run_with_submitit.py."""
import json
import os
import subprocess
import sys

import pytest

import run_with_submitit

from cli_errors import user_error
from tiny_configs import RUN, options

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MINE = ["_common.sh", "train_single_gpu.sh", "train_multi_gpu.sh", "train_multi_node.sh", "train_slurm.sh",
        "train_submitit.sh", "eval_single_gpu.sh", "eval_multi_gpu.sh"]
# the shared tiny run (tests/tiny_configs.py); dn_scalar=4 must win over the script's README dn_scalar=100
TINY = options(RUN, epochs=1, synthetic_num_train=4, synthetic_num_val=2, batch_size=2, dn_scalar=4)


@pytest.mark.parametrize("name", MINE)
def test_bash_syntax(name):
    path = os.path.join(ROOT, "scripts", name)
    subprocess.run(["bash", "-n", path], check=True)
    assert "set -euo pipefail" in open(path).read() or name == "_common.sh"


@pytest.mark.parametrize("name", [n for n in MINE if n != "_common.sh"])
def test_usage_on_missing_args(name):
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", name)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("usage:")


def test_unknown_variant():
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "train_single_gpu.sh"), "dino3", "/c", "/o"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown variant 'dino3'" in proc.stderr


def test_single_gpu_script_end_to_end(tmp_path):
    """The README options reach main.py and --options passthrough overrides them (tiny synthetic run on CPU)."""
    from datasets.synthetic import ensure_synthetic_dataset
    out = tmp_path / "out"
    # the script's COCO_PATH is read (a synthetic config switches to it): a small COCO-format folder
    coco = ensure_synthetic_dataset(str(tmp_path / "coco"), num_train=4, num_val=2, image_size=96, seed=0)
    env = dict(os.environ, OMP_NUM_THREADS="2")
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "train_single_gpu.sh"), "augdetr4", coco,
                           str(out), "-c", "config/DINO/DINO_synthetic.py", "--device", "cpu", "--num_workers", "0",
                           "--options", *TINY, "num_hae_layers=1"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out / "config_args_all.json") as f:
        args = json.load(f)
    assert args["use_hae"] and args["use_emca"] and args["embed_init_tgt"] is True and args["use_ema"] is False
    assert args["dn_number"] == 4 and args["hidden_dim"] == RUN["hidden_dim"]  # passthrough wins over dn_scalar=100
    assert (out / "checkpoint.pth").is_file()


def test_submitit_missing_is_one_line_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # makes `import submitit` raise ImportError
    with user_error(capsys, r"pip install submitit"):
        run_with_submitit.main(["--nodes", "1", "--ngpus", "1"])


def test_submitit_args_split(capsys):
    opts, rest = run_with_submitit.get_parser().parse_known_args(
        ["--nodes", "2", "--ngpus", "4", "--partition", "p", "-c", "x.py", "--use_hae"])
    assert (opts.nodes, opts.ngpus, opts.partition) == (2, 4, "p") and rest == ["-c", "x.py", "--use_hae"]
    with user_error(capsys, ">= 1"):
        run_with_submitit.main(["--nodes", "0"])


def test_slurm_script_master_addr_from_long_host_list(tmp_path):
    """srun gets main.py with the variant's flags and MASTER_ADDR is the allocation's first host, also when
    the host list is longer than a pipe buffer (scontrol and srun are stand-ins on PATH)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/bin/sh\nfor i in $(seq 1 20000); do echo "node-$i"; done\n')
    (bin_dir / "srun").write_text('#!/bin/sh\necho "MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT ARGS=$*"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_NODELIST="node-[1-20000]",
               SLURM_SUBMIT_DIR=ROOT)
    env.pop("MASTER_ADDR", None)
    env.pop("MASTER_PORT", None)
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "train_slurm.sh"), "augdetr4", "/coco", "/out"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("MASTER_ADDR=node-1 MASTER_PORT=29500 ARGS=python main.py")
    assert "--use_hae --use_emca" in proc.stdout and "--coco_path /coco --output_dir /out" in proc.stdout


@pytest.mark.parametrize("backbone, variant, config", [
    ("swin_L_384_22k", "dino5", "config/DINO/DINO_5scale_swin.py"),
    ("convnext_xlarge_22k", "augdetr4", "config/DINO/DINO_4scale_swin.py"),
    ("resnet101", "dino4", "config/DINO/DINO_4scale.py"),
])
def test_backbone_variable_picks_config_and_option(backbone, variant, config):
    """BACKBONE=NAME: a Swin/ConvNeXt takes the _swin.py config twin; every backbone reaches --options."""
    script = f'source scripts/_common.sh; variant_flags {variant}; echo "$CONFIG|${{DINO_OPTIONS[-1]}}"'
    proc = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, BACKBONE=backbone), check=True)
    assert proc.stdout.strip() == f"{config}|backbone={backbone}"
    assert os.path.isfile(os.path.join(ROOT, config))
    proc = subprocess.run(["bash", "-c", 'source scripts/_common.sh; variant_flags dino4; echo "${DINO_OPTIONS[-1]}"'],
                          cwd=ROOT, capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                                         if k != "BACKBONE"}, check=True)
    assert proc.stdout.strip() == "dn_box_noise_scale=1.0"  # no BACKBONE: the options are unchanged
