"""scripts/ablation_deformable.sh (issue 21, item 5): the four runs it launches, checked with a stand-in
`python` on PATH that records its arguments (the runs themselves are main.py's, tested elsewhere)."""
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "ablation_deformable.sh")


def launched(tmp_path, *script_args):
    """The argument lines the script gave `python` (one per call), and its exit status."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "python"
    fake.write_text('#!/usr/bin/env bash\necho "$*" >> "$FAKE_LOG"\n')
    fake.chmod(0o755)
    log = tmp_path / "calls.txt"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_LOG=str(log))
    proc = subprocess.run(["bash", SCRIPT, *script_args], env=env, capture_output=True, text=True)
    return (log.read_text().splitlines() if log.exists() else []), proc


def test_synthetic_mode_runs_the_four_variants_on_the_synthetic_config(tmp_path):
    calls, proc = launched(tmp_path, "--synthetic", str(tmp_path / "out"), "--options", "epochs=1")
    assert proc.returncode == 0, proc.stderr
    cfg = "-c config/DeformableDETR/deformable_detr_synthetic.py"
    out = tmp_path / "out"
    assert calls[:4] == [f"main.py {cfg} --output_dir {out}/deformable_detr --options epochs=1",
                         f"main.py {cfg} --output_dir {out}/hae --use_hae --options epochs=1",
                         f"main.py {cfg} --output_dir {out}/emca --use_emca --options epochs=1",
                         f"main.py {cfg} --output_dir {out}/augdetr --use_hae --use_emca --options epochs=1"]
    assert calls[4].startswith("tools/collect_results.py") and calls[4].endswith(
        "--names Deformable-DETR +HAE +EMCA +AugDETR")


def test_coco_mode_uses_the_official_recipe_without_dino_options(tmp_path):
    coco = tmp_path / "coco"
    coco.mkdir()
    calls, proc = launched(tmp_path, str(coco), "1", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert calls[0] == (f"main.py -c config/DeformableDETR/deformable_detr.py --coco_path {coco} "
                        f"--output_dir {tmp_path / 'out'}/deformable_detr")
    assert len(calls) == 5 and "--use_hae --use_emca" in calls[3]


def test_bad_arguments_are_usage_errors(tmp_path):
    assert subprocess.run(["bash", "-n", SCRIPT]).returncode == 0
    calls, proc = launched(tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("usage:") and calls == []
    calls, proc = launched(tmp_path, str(tmp_path / "missing"), "8")
    assert proc.returncode == 2 and "is not a folder" in proc.stderr and calls == []
