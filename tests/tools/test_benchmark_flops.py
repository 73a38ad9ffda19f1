"""tools/benchmark.py --flops-only: the count on fake tensors equals FlopCounterMode's count of a real
forward exactly (tiny DINO, AugDETR, both msda backends, tiny Swin and ConvNeXt, 4 and 5 levels), the
deformable attention is counted in a fresh process, and the printed lines and table."""
import os
import re
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models.common.backbones.table import BACKBONES
from tools import benchmark
from tools.common import ToolError, build_eval_model, count_parameters, tool_args

from cli_errors import user_error

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_SWIN = dict(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), drop_path_rate=0.0)
TINY_CONVNEXT = dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))


@pytest.fixture
def tiny_timm_specs(monkeypatch):
    """swin_T_224_1k and convnext_tiny_1k at a tiny width, so whole DINOs build in a moment."""
    for name, small in (("swin_T_224_1k", TINY_SWIN), ("convnext_tiny_1k", TINY_CONVNEXT)):
        monkeypatch.setitem(BACKBONES, name, BACKBONES[name].resized(**small))


def real_count(args, h, w):
    """(FLOPs per operator, total FLOPs, (trainable, total) parameters) of one eval forward on real
    tensors, as run_inference counts."""
    model, _ = build_eval_model(args)
    params = count_parameters(model)
    images, _ = benchmark.dummy_batch(h, w, 1, torch.device("cpu"))
    counter = FlopCounterMode(display=False, custom_mapping=benchmark.flop_mapping())
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad(), counter:
        model(images)
    return {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}, counter.get_total_flops(), params


CASES = {
    "dino": ([], False, False),
    "dino-pytorch-msda": (["msda_backend=pytorch"], False, False),
    "augdetr": (["enc_layers=2", "num_hae_layers=1"], True, True),
    "augdetr-pytorch-msda": (["enc_layers=2", "num_hae_layers=1", "msda_backend=pytorch"], True, True),
    "swin-4scale": (["backbone=swin_T_224_1k", "use_checkpoint=True"], False, False),
    "swin-5scale": (["backbone=swin_T_224_1k", "return_interm_indices=[0,1,2,3]", "num_feature_levels=5"],
                    False, False),
    "convnext-5scale-augdetr": (["backbone=convnext_tiny_1k", "return_interm_indices=[0,1,2,3]", "num_feature_levels=5",
                                 "enc_layers=2", "num_hae_layers=1"],
                        True, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fake_count_equals_real_count(case, tiny_cfg, tiny_timm_specs):
    """Same FLOPs (exact integers, the deformable attention included) and parameters as a real forward;
    80x112 is not a multiple of the Swin window or of the strides, so padding paths run too."""
    config, opts = tiny_cfg
    extra, hae, emca = CASES[case]
    args = tool_args(config, [*opts, *extra], flags={"use_hae": hae, "use_emca": emca})
    per_op, total, params = real_count(args, 80, 112)
    assert any("msda" in k or "grid_sampler" in k for k in per_op), per_op  # the attention is in the count
    limit = torch._subclasses.fake_tensor.CONSTANT_NUMEL_LIMIT
    fake = benchmark.count_gflops_fake(args, 80, 112)
    assert torch._subclasses.fake_tensor.CONSTANT_NUMEL_LIMIT == limit  # torch's setting restored
    assert fake["gflops"] == total / 2e9
    assert (fake["params_trainable"], fake["params_total"]) == params


def test_fake_model_holds_no_real_tensors(tiny_cfg):
    config, opts = tiny_cfg
    model, mode, _, _ = benchmark.fake_model(tool_args(config, opts))
    tensors = [*model.parameters(), *model.buffers()]
    assert tensors and all(isinstance(t, torch._subclasses.fake_tensor.FakeTensor) and t.fake_mode is mode
                           and t.device == torch.device("cpu") for t in tensors)


def test_first_count_in_a_process_includes_the_deformable_attention(tiny_cfg):
    """A new process (library not yet loaded) counts the same as a second count in it: the msda
    formula was left out of the first count before flop_mapping resolved the backend."""
    config, opts = tiny_cfg
    code = "\n".join([
        "import sys",
        "from tools import benchmark",
        "a = ['-c', sys.argv[1], '--image-size', '64', '96', '--runs', '1', '--warmup', '0']",
        "o = ['--options', *sys.argv[2:]]",
        "print(benchmark.main(a + o)['gflops'], benchmark.main(a + o)['gflops'],",
        "      benchmark.main(a + ['--flops-only'] + o)['gflops'])"])
    out = subprocess.run([sys.executable, "-c", code, config, *opts], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    first, second, fake = out.stdout.strip().splitlines()[-1].split()
    assert first == second == fake


def test_flops_only_lines_and_backbone_table(tiny_cfg, tiny_timm_specs, capsys):
    config, opts = tiny_cfg
    base = ["-c", config, "--image-size", "64", "96", "--flops-only", "--options", *opts]
    res = benchmark.main(base)
    assert set(res) == {"config", "backbone", "use_hae", "use_emca", "image_size", "device", "params_trainable",
                        "params_total", "gflops", "msda_backend"}
    lines = [line for line in capsys.readouterr().out.strip().splitlines() if not line.startswith("CPU threads: ")]
    assert re.fullmatch(rf"config {re.escape(config)}  hae=False emca=False  input 1x3x64x96  device cpu \(msda "
                        r"backend (compiled|pytorch)\)  counted on fake tensors, FPS not measured", lines[0])
    assert lines[1:] == [f"backbone resnet18  parameters: {res['params_trainable'] / 1e6:.2f}M trainable, "
                         f"{res['params_total'] / 1e6:.2f}M total",
                         f"GFLOPs (multiply-adds, fvcore convention = FLOPs/2): {res['gflops']:.1f}"]
    rows = benchmark.main([*base[:-len(opts) - 1], "--backbones", "resnet18,swin_T_224_1k", "--options", *opts])
    assert [r["backbone"] for r in rows] == ["resnet18", "swin_T_224_1k"] and rows[0]["gflops"] == res["gflops"]
    lines = [line for line in capsys.readouterr().out.strip().splitlines() if not line.startswith("CPU threads: ")]
    assert lines[1:] == ["| backbone | params (M) | GFLOPs |", "|---|---|---|",
                         *(f"| {r['backbone']} | {r['params_total'] / 1e6:.1f} | {r['gflops']:.1f} |" for r in rows)]


@pytest.mark.parametrize("argv", [["--backbones", "swin_T_224_1k"], ["--flops-only", "--train-step"],
                                  ["--flops-only", "--backbones", ","]])
def test_flops_only_bad_flags(argv, capsys):
    with user_error(capsys, "^benchmark.py: error: --"):
        benchmark.main(argv)


def test_a_forward_that_reads_values_is_a_one_line_error(monkeypatch, tiny_cfg):
    """A model that branches on an activation's value cannot be counted on fake tensors."""
    class ReadsValues(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.sum().item() > 0 else x

    def fake_model(args):
        mode = torch._subclasses.fake_tensor.FakeTensorMode()
        return ReadsValues(), mode, 0, 0

    monkeypatch.setattr(benchmark, "fake_model", fake_model)
    config, opts = tiny_cfg
    with pytest.raises(ToolError, match=r"^--flops-only: the forward reads a tensor's values "
                                        r"\(.*\); count on real tensors instead: leave out --flops-only$"):
        benchmark.count_gflops_fake(tool_args(config, opts), 8, 8)
