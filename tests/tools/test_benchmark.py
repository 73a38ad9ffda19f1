"""tools/benchmark.py on a tiny model: parameter counts, FLOP formulas, and the output format of the
inference and train-step modes (smoke tests: no speed is asserted)."""
import os
import re

import pytest
import torch

from models.registry import CONFIG_DIR
from tools import benchmark

from cli_errors import user_error


def test_msda_flop_formulas():
    value, loc, weight = (2, 30, 4, 8), (2, 5, 4, 3, 2, 2), (2, 5, 4, 3, 2)
    assert benchmark.msda_op_flops(value, (3, 2), (3,), loc, weight) == 10 * 2 * 5 * 4 * 3 * 2 * 8
    assert benchmark.grid_sample_flops((8, 8, 6, 5), (8, 5, 2, 2)) == 8 * 8 * 8 * 5 * 2


def test_gflops_counts_grid_sample_path():
    """The registered grid_sampler formula is what a pure grid_sample module reports."""
    class M(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.grid_sample(x, torch.zeros(1, 4, 5, 2), align_corners=False)
    assert benchmark.count_gflops(M(), torch.randn(1, 3, 6, 6)) == pytest.approx(8 * 3 * 4 * 5 / 2e9)


def test_inference_mode_result_and_printed_format(tiny_cfg, capsys):
    """The result dict and the four printed lines on a tiny model; parameter counts are exact,
    FPS only has to be a number (no speed is asserted)."""
    from models import build_model
    from tools.common import tool_args

    config, opts = tiny_cfg
    res = benchmark.main(["-c", config, "--image-size", "64", "96", "--runs", "1", "--warmup", "0",
                          "--options", *opts])
    assert set(res) == {"config", "use_hae", "use_emca", "image_size", "device", "params_trainable",
                        "params_total", "gflops", "fps", "msda_backend"}
    model = build_model(tool_args(config, opts))[0]
    assert res["params_total"] == sum(p.numel() for p in model.parameters())
    assert res["params_trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert res["image_size"] == [64, 96] and res["device"] == "cpu" and res["msda_backend"] in ("compiled", "pytorch")
    assert isinstance(res["gflops"], float) and isinstance(res["fps"], float)
    thread_line, *lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"CPU threads: \d+ \((OMP_NUM_THREADS|--threads); \d+ cores available\)", thread_line)
    assert re.fullmatch(rf"config {re.escape(config)}  hae=False emca=False  input 1x3x64x96 \(--image-size\)  device "
                        r"cpu \(msda backend (compiled|pytorch), \d+ CPU threads\)", lines[0])
    assert lines[1] == (f"parameters: {res['params_trainable'] / 1e6:.2f}M trainable, "
                        f"{res['params_total'] / 1e6:.2f}M total")
    assert lines[2] == f"GFLOPs (multiply-adds, fvcore convention = FLOPs/2): {res['gflops']:.1f}"
    assert re.fullmatch(r"inference FPS at batch 1: \d+\.\d{3} \(1 timed runs after 0 warm-up\)", lines[3])


def test_inference_gflops_are_the_counted_flops_of_the_model(tiny_cfg):
    """The reported GFLOPs are FlopCounterMode's count of one forward of the same model and input."""
    from tools.common import build_eval_model, tool_args

    config, opts = tiny_cfg
    res = benchmark.main(["-c", config, "--image-size", "64", "96", "--runs", "1", "--warmup", "0",
                          "--options", *opts, "msda_backend=pytorch"])
    model, _ = build_eval_model(tool_args(config, [*opts, "msda_backend=pytorch"]))
    images, _ = benchmark.dummy_batch(64, 96, 1, torch.device("cpu"))
    assert res["gflops"] == pytest.approx(benchmark.count_gflops(model, images), rel=1e-9)


def test_both_backends_count_deformable_attention(tiny_cfg):
    config, opts = tiny_cfg
    args = ["-c", config, "--image-size", "64", "96", "--runs", "1", "--warmup", "0", "--options", *opts]
    try:
        b = benchmark.main([*args, "--msda-backend", "compiled"])
    except RuntimeError as err:
        pytest.skip(f"compiled msda CPU kernel unavailable: {err}")
    finally:
        from models.dino.ops import set_backend
        set_backend(None)
    a = benchmark.main([*args, "--msda-backend", "pytorch"])
    set_backend(None)
    # same model; the compiled formula also counts the attention weighting (10 vs 8 FLOPs per sample)
    assert b["gflops"] > a["gflops"] and b["gflops"] == pytest.approx(a["gflops"], rel=0.2)


def test_train_step_table(tiny_cfg, capsys):
    """Rows per variant and the printed table's format; parameter counts are exact, times and
    memory only have to be numbers (no speed is asserted)."""
    config, opts = tiny_cfg
    rows = benchmark.main(["--train-step", "-c", config, "--variants", "dino,augdetr", "--image-size", "64", "96",
                           "--repeats", "1", "--options", *opts, "enc_layers=2", "num_hae_layers=1"])
    assert [r["variant"] for r in rows] == ["dino", "augdetr"]
    assert all(set(r) == {"variant", "image_size", "time_s", "peak_mib", "params_total", "params_trainable"}
               for r in rows)
    assert all(r["image_size"] == [64, 96] for r in rows)
    assert all(isinstance(r["time_s"], float) and isinstance(r["peak_mib"], float) for r in rows)
    assert rows[1]["params_total"] > rows[0]["params_total"]  # HAE and EMCA add parameters
    thread_line, *lines = capsys.readouterr().out.strip().splitlines()
    assert thread_line.startswith("CPU threads: ")
    assert lines[1] == ("| variant | fwd+bwd time (s) | vs dino | peak memory (MiB) | params (M) "
                        "| params delta vs dino |")
    delta = rows[1]["params_total"] - rows[0]["params_total"]
    assert re.fullmatch(rf"\| dino \| \d+\.\d{{3}} \| 1\.00x \| \d+ \| {rows[0]['params_total'] / 1e6:.3f} \| \+0 \|",
                        lines[3])
    assert re.fullmatch(rf"\| augdetr \| \d+\.\d{{3}} \| \d+\.\d\dx \| \d+ \| {rows[1]['params_total'] / 1e6:.3f} \| "
                        rf"\+{delta:,d} \|", lines[4])
    d, a = rows
    assert lines[-1] == (f"augdetr/dino train-step time ratio at 64x96: {a['time_s'] / d['time_s']:.3f} "
                         f"(dino {d['time_s']:.3f} s, {d['peak_mib']:.0f} MiB; "
                         f"augdetr {a['time_s']:.3f} s, {a['peak_mib']:.0f} MiB)")
    assert lines[0].startswith(f"train step: {config}, image 64x96, batch 1")


def test_train_step_variants_name_a_modelname_with_eval_times_and_region_shares(tiny_cfg, capsys):
    config, opts = tiny_cfg
    rows = benchmark.main(["--train-step", "-c", config, "--variants", "dino,ddq_detr+augdetr", "--eval-step",
                           "--image-size", "64", "96", "--repeats", "1", "--options", *opts, "enc_layers=2",
                           "dec_layers=2", "num_hae_layers=1"])
    assert [r["variant"] for r in rows] == ["dino", "ddq_detr+augdetr"]
    assert all(isinstance(r["eval_time_s"], float) for r in rows)
    assert "region_share" not in rows[0]  # DINO runs no NMS
    for r in rows[1:]:
        assert set(r["region_share"]) == {"ddq.encoder_nms", "ddq.decoder_nms"}
        assert all(0 < share < 1 for share in r["region_share"].values())
    assert rows[1]["params_total"] > rows[0]["params_total"]
    out = capsys.readouterr().out
    assert "| variant | eval forward time (s) | vs dino |" in out and "| dino | " in out
    assert re.search(r"ddq_detr\+augdetr: ddq.encoder_nms \d+\.\d% of a profiled training step", out)
    with user_error(capsys, r"\+foo is not one of"):
        benchmark.main(["--train-step", "--variants", "ddq_detr+foo"])


def test_bad_variant(capsys):
    with user_error(capsys, "choose from"):
        benchmark.main(["--train-step", "--variants", "dino,foo"])
    with user_error(capsys, "config file config/none.py not found"):
        benchmark.main(["--train-step", "--variants", "dino,x=config/none.py"])


def test_train_step_other_detectors_side_by_side(capsys, monkeypatch):
    """A modelname (its defaults file) and a NAME=FILE variant run in the same process as dino; each prints its
    ratio to dino's time, with both figures (sizes both detectors take; no speed is asserted)."""
    from tiny_configs import DETR_RUN, options
    monkeypatch.setenv("MSDA_BACKEND", "pytorch")
    tiny = options(DETR_RUN, backbone_weights=None)
    rows = benchmark.main(["--train-step", "-c", "config/DINO/DINO_synthetic.py", "--variants",
                           "dino,detr,small=config/DETR/detr_synthetic.py", "--image-size", "64", "96",
                           "--repeats", "1", "--options", *tiny])
    assert [r["variant"] for r in rows] == ["dino", "detr", "small"]
    assert rows[1]["params_total"] != rows[2]["params_total"]  # detr_r50.py's ResNet-50 vs the synthetic ResNet-18
    lines = capsys.readouterr().out.strip().splitlines()
    d, r = rows[0], rows[1]
    assert lines[-2] == (f"detr/dino train-step time ratio at 64x96: {r['time_s'] / d['time_s']:.3f} "
                         f"(detr {os.path.join(CONFIG_DIR, 'DETR', 'detr_r50.py')} {r['time_s']:.3f} s, "
                         f"{r['peak_mib']:.0f} MiB; dino {d['time_s']:.3f} s, {d['peak_mib']:.0f} MiB)")
    assert lines[-1].startswith("small/dino train-step time ratio at 64x96: ")
    assert "(small config/DETR/detr_synthetic.py " in lines[-1]


def test_cpu_peak_memory_counts_nested_allocations_once():
    x = torch.randn(1000, 1000)
    lin = torch.nn.Linear(1000, 4000)

    def step():  # linear's output (16 MB) is allocated by its child op addmm; relu's by clamp_min
        torch.relu(lin(x)).sum()

    peak = benchmark.peak_memory_step(step, torch.device("cpu"))
    assert 31e6 <= peak <= 33e6  # both 16 MB tensors alive at once, each counted once


def test_train_step_puts_another_detector_next_to_dino(capsys):
    """A variant named by modelname (its defaults file) or LABEL=CONFIG is built from that config; its time
    ratio to the first variant is printed (no speed is asserted)."""
    shared = ["backbone=resnet18", "backbone_weights=None", "hidden_dim=32", "nheads=4", "dim_feedforward=64",
              "enc_layers=1", "dec_layers=1", "num_queries=10", "num_select=10", "num_classes=7",
              "msda_backend=pytorch"]
    two_stage = "ddetr_2s=config/DeformableDETR/deformable_detr_two_stage.py"
    rows = benchmark.main(["--train-step", "--variants", f"dino,deformable_detr,{two_stage}", "--image-size", "64",
                           "96", "--repeats", "1", "--options", *shared])
    assert [r["variant"] for r in rows] == ["dino", "deformable_detr", "ddetr_2s"]
    assert rows[0]["params_total"] != rows[1]["params_total"] != rows[2]["params_total"]
    lines = capsys.readouterr().out.strip().splitlines()
    d, m, t = rows
    from models import DETECTORS
    assert lines[-2:] == [
        f"deformable_detr/dino train-step time ratio at 64x96: {m['time_s'] / d['time_s']:.3f} (deformable_detr "
        f"{DETECTORS['deformable_detr'].defaults_file} {m['time_s']:.3f} s, {m['peak_mib']:.0f} MiB; dino "
        f"{d['time_s']:.3f} s, {d['peak_mib']:.0f} MiB)",
        f"ddetr_2s/dino train-step time ratio at 64x96: {t['time_s'] / d['time_s']:.3f} (ddetr_2s "
        f"config/DeformableDETR/deformable_detr_two_stage.py {t['time_s']:.3f} s, {t['peak_mib']:.0f} MiB; dino "
        f"{d['time_s']:.3f} s, {d['peak_mib']:.0f} MiB)"]
    with user_error(capsys, "config file missing.py not found"):
        benchmark.main(["--train-step", "--variants", "dino,x=missing.py"])
