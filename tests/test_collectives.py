"""Collectives go through util/dist only, and its helpers work in a real 2-process gloo group.

util/dist puts a collective's tensors on the process group's device (CUDA under NCCL, which
rejects CPU tensors); a module calling torch.distributed directly would bypass that, so the
source tree is scanned for such calls. The 2-process run also checks that only the first
process of a node downloads the backbone weights while the other waits for them.
"""
import ast
import json
import os
import socket
import time
from typing import List, Tuple

import pytest
import torch
import torch.multiprocessing as mp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIVES = {
    "all_reduce", "all_gather", "all_gather_object", "all_gather_into_tensor", "all_to_all", "all_to_all_single",
    "broadcast", "broadcast_object_list", "barrier", "monitored_barrier", "reduce", "reduce_scatter",
    "reduce_scatter_tensor", "gather", "gather_object", "scatter", "scatter_object_list", "send", "recv",
    "isend", "irecv", "batch_isend_irecv"}


def direct_collectives(source: str) -> List[Tuple[int, str]]:
    """(line, name) of every torch.distributed collective that `source` imports or references."""
    tree = ast.parse(source)
    dist_names, torch_names, hits = set(), set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("torch.distributed") and a.asname:
                    dist_names.add(a.asname)
                elif a.name == "torch" or a.name.startswith("torch."):
                    torch_names.add(a.asname or "torch")
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                if node.module == "torch" and a.name == "distributed":
                    dist_names.add(a.asname or a.name)
                elif node.module.startswith("torch.distributed"):
                    if a.name in COLLECTIVES:
                        hits.append((node.lineno, a.name))
                    else:  # a submodule such as distributed_c10d
                        dist_names.add(a.asname or a.name)
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and node.attr in COLLECTIVES):
            continue
        base = node.value
        if isinstance(base, ast.Name) and base.id in dist_names:
            hits.append((node.lineno, node.attr))
        elif (isinstance(base, ast.Attribute) and base.attr == "distributed" and isinstance(base.value, ast.Name)
              and base.value.id in torch_names):
            hits.append((node.lineno, node.attr))
    return sorted(hits)


def project_sources() -> List[str]:
    """Every .py file of the project except util/dist.py and tests/ (hidden folders skipped)."""
    out = []
    for folder, dirs, files in os.walk(ROOT):
        rel = os.path.relpath(folder, ROOT)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__"
                         and not (rel == "." and d in ("tests", "logs")))
        out += [os.path.join(rel, f) for f in sorted(files) if f.endswith(".py")]
    return [os.path.normpath(p) for p in out if os.path.normpath(p) != os.path.join("util", "dist.py")]


@pytest.mark.parametrize("source, expected", [
    ("import torch.distributed as dist\ndist.all_reduce(x)", [(2, "all_reduce")]),
    ("import torch\ntorch.distributed.barrier()", [(2, "barrier")]),
    ("from torch import distributed as td\nf = td.all_gather_object", [(2, "all_gather_object")]),
    ("from torch.distributed import broadcast, get_rank", [(1, "broadcast")]),
    ("from torch.distributed import distributed_c10d as c\nc.gather(x)", [(2, "gather")]),
    ("from util import dist\ndist.barrier()\ndist.all_reduce_sum(x)", []),
    ("import torch.distributed as dist\ndist.get_rank(); dist.is_initialized()", []),
])
def test_the_scanner_finds_direct_collectives(source, expected):
    assert direct_collectives(source) == expected


def test_no_module_outside_util_dist_calls_torch_distributed_collectives():
    sources = project_sources()
    assert os.path.join("models", "dino", "augdetr", "emca_weights.py") in sources and len(sources) > 40
    found = {}
    for rel in sources:
        with open(os.path.join(ROOT, rel)) as f:
            hits = direct_collectives(f.read())
        if hits:
            found[rel] = hits
    assert found == {}, f"use util/dist's helpers (they put tensors on the group's device) instead: {found}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    """One rank of a 2-process gloo group: every util/dist helper, the criterion's box count, the EMCA
    summary and the backbone weights fetch; writes rank<R>.json."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    import torchvision

    from models.common.backbones.weights import backbone_state
    from models.common.criterion import SetCriterion
    from util import dist as d

    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        downloads = []

        def fake_download(url, dst, *args, **kwargs):  # a slow download: rank 1 must wait for it
            downloads.append(rank)
            torch.manual_seed(7)
            state = torchvision.models.resnet18(weights=None).state_dict()
            tmp = dst + ".part"
            torch.save(state, tmp)
            time.sleep(0.5)  # widens the window in which a rank that did not wait would find no file
            os.replace(tmp, dst)

        torch.hub.download_url_to_file = fake_download
        state = backbone_state("IMAGENET1K_V1", "resnet18")
        x = torch.tensor([rank + 1.0, 10.0 * rank], dtype=torch.float64)
        total = d.all_reduce_sum(x)
        report = {
            "device": str(d.collective_device()), "local_rank": d.get_local_rank(),
            "sum": total.tolist(), "sum_dtype": str(total.dtype), "input_after": x.tolist(),
            "mean": {k: v.item() for k, v in d.all_reduce_mean({"a": torch.tensor(float(rank)),
                                                                  "b": torch.tensor(2.0 * rank)}).items()},
            "gathered": d.all_gather_object({"rank": rank}),
            # the loss normaliser (uses no state of the criterion)
            "num_boxes": SetCriterion.num_boxes(None, [{"labels": torch.zeros(3 * rank + 1)}], "cpu"),
            "downloads": downloads, "conv1_sum": state["conv1.weight"].double().sum().item(),
        }
        d.barrier()
    finally:
        torch.distributed.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)


def test_util_dist_helpers_in_a_two_process_gloo_group(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # empty hub cache, inherited by the ranks
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for rank, r in enumerate((r0, r1)):
        assert r["device"] == "cpu" and r["local_rank"] == rank
        assert r["sum"] == [3.0, 10.0] and r["sum_dtype"] == "torch.float64"
        assert r["input_after"] == [rank + 1.0, 10.0 * rank]  # the input is not reduced in place
        assert r["mean"] == {"a": 0.5, "b": 1.0}
        assert r["gathered"] == [{"rank": 0}, {"rank": 1}]
        assert r["num_boxes"] == 2.5  # (1 + 4) boxes over 2 processes
    assert r0["downloads"] == [0] and r1["downloads"] == []  # one download per node, by local rank 0
    assert r0["conv1_sum"] == r1["conv1_sum"]
