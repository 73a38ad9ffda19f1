"""2-process CPU (gloo) training and evaluation through torch.distributed.run on the synthetic data.

Checks: DDP keeps both ranks' parameters identical after every epoch, the
DistributedSampler gives the ranks disjoint images and reshuffles per epoch
(set_epoch), only rank 0 writes files, the process group is destroyed on return,
and a 2-process evaluation gives the same AP as a 1-process one of the same
checkpoint (with an odd number of val images, so the sampler pads one duplicate).
"""
import json
import os
import socket
import subprocess
import sys

import pytest

import main

from coco_layouts import make_test_dev_layout
from tiny_configs import RUN, options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "distributed_worker.py")
TINY = options(RUN, synthetic_num_train=8, synthetic_num_val=5, batch_size=2)  # tests/tiny_configs.py


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main_argv(out, data, *extra, epochs=2):
    return ["--output_dir", str(out), "--num_workers", "0", "--device", "cpu", *extra,
            "--options", *TINY, f"epochs={epochs}", f"synthetic_dir={data}"]


def torchrun(report, argv, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--master_port={free_port()}", WORKER, str(report), "--", *argv]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = []
    for r in range(nproc):
        with open(os.path.join(report, f"rank{r}.json")) as f:
            reports.append(json.load(f))
    return reports


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("dist")
    out, data = base / "out", base / "data"
    reports = torchrun(base / "report_train", main_argv(out, data))
    return out, data, reports, base


def test_ranks_hold_identical_parameters(trained):
    _, _, reports, _ = trained
    for rep in reports:
        assert not rep["dist_after"], "process group left alive after main() returned"
        assert [e["world_size"] for e in rep["epochs"]] == [2, 2]
    for epoch in reports[0]["epochs"]:
        digests = [r["digest"] for r in epoch["all"]]
        assert digests[0] == digests[1]
    # training moved the weights
    assert reports[0]["epochs"][0]["all"][0]["digest"] != reports[0]["epochs"][1]["all"][0]["digest"]


def test_sampler_splits_and_reshuffles(trained):
    _, _, reports, _ = trained
    e0, e1 = (e["all"] for e in reports[0]["epochs"])
    assert not set(e0[0]["indices"]) & set(e0[1]["indices"])
    assert sorted(e0[0]["indices"] + e0[1]["indices"]) == list(range(8))
    assert e0[0]["indices"] != e1[0]["indices"]  # set_epoch reshuffled


def test_only_rank0_writes(trained):
    out, _, _, _ = trained
    with open(out / "log.txt") as f:
        assert [json.loads(line)["epoch"] for line in f] == [0, 1]  # one line per epoch, not per rank
    assert (out / "checkpoint.pth").is_file()
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-ckpt-")]


def test_two_process_eval_matches_one_process(trained, tmp_path):
    out, data, _, base = trained
    ckpt = str(out / "checkpoint.pth")
    two = torchrun(tmp_path / "report_eval", main_argv(tmp_path / "two", data, "--eval", "--resume", ckpt,
                                                        "--save_results"))
    one = main.main(main.build_args(main_argv(tmp_path / "one", data, "--eval", "--resume", ckpt,
                                              "--save_results")))
    ap2 = two[0]["stats"]["coco_eval_bbox"]
    assert two[1]["stats"]["coco_eval_bbox"] == ap2  # every rank gets the gathered result
    assert ap2 == pytest.approx(one["coco_eval_bbox"], abs=1e-9)
    with open(tmp_path / "two" / "results.json") as f:
        dets2 = json.load(f)
    with open(tmp_path / "one" / "results.json") as f:
        dets1 = json.load(f)
    assert {d["image_id"] for d in dets2} == {d["image_id"] for d in dets1}
    assert len({d["image_id"] for d in dets1}) == 5


def test_two_process_test_dev_writes_every_image_once(trained, tmp_path):
    """--test on 2 ranks: rank 0 writes one file with the gathered detections of all 5 images (the
    sampler pads one duplicate), equal to a 1-process run's."""
    out, data, _, _ = trained
    image_ids = make_test_dev_layout(tmp_path / "coco", str(data))
    argv = ["--test", "--resume", str(out / "checkpoint.pth"), "--dataset_file", "coco",
            "--coco_path", str(tmp_path / "coco"), "--note", "ddp"]
    two = torchrun(tmp_path / "report_test", main_argv(tmp_path / "two", data, *argv))
    one = main.main(main.build_args(main_argv(tmp_path / "one", data, *argv)))
    name = "detections_test-dev2017_ddp_results.json"
    assert two[0]["stats"] == one and two[0]["stats"]["test_dev_images"] == len(image_ids) == 5
    assert "test_dev_detections" not in two[1]["stats"]  # only rank 0 writes
    with open(tmp_path / "two" / name) as f:
        dets2 = json.load(f)
    with open(tmp_path / "one" / name) as f:
        dets1 = json.load(f)
    assert {d["image_id"] for d in dets2} == image_ids and dets2 == dets1
