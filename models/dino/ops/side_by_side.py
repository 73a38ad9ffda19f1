"""GPU side-by-side of the msda CUDA kernel: this checkout's kernel, the kernel before issue 24, and the
PyTorch reference, forward and forward+backward, fp32 and bf16, at two shapes, in one run.

    python -m models.dino.ops.side_by_side                  (scripts/gpu_check.sh, part side-by-side)
    python -m models.dino.ops.side_by_side --export-prev DIR  (where git is: the previous sources into DIR)

The previous kernel (commit PREV_COMMIT) is built just in time as a separate extension: its sources come
from `git show` (or from $MSDA_PREV_SRC, a folder written by --export-prev, where the checkout has no
.git), compiled with -Dmsda=msda_prev so that its operators (torch.ops.msda_prev) and C++ symbols do not
clash with this checkout's msda library. Shapes:
  anchor   10,000 queries, B=4, H=8, D=32, L=4 (64x64 .. 8x8), P=4, random points (the original kernel's
           published benchmark: 5.37 ms fwd / 28.0 ms fwd+bwd on an RTX 2060, fp32)
  encoder  DINO's encoder at 800x1333: B=2, levels 100x167 .. 13x21 (22,223 tokens) queried by as many
           queries, points within about 2 pixels of each query's own position
Times: median of CUDA-event timings after warm-up. The compiled kernels' fwd+bwd is their forward op plus
their backward op (the work autograd runs); the reference's is autograd's forward + backward.
"""
import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from . import _build, _library, build_config
from .reference import ms_deform_attn_pytorch

PREV_COMMIT = "e8de0e2"  # the last commit before issue 24's kernel
PREV_FILES = ("msda_common.h", "msda_cuda_kernels.cuh", "msda_cuda.cu")
REPO = Path(__file__).resolve().parents[3]
# the previous kernel's operators, under their own namespace (its msda_cuda.cu registers the CUDA
# implementations with TORCH_LIBRARY_IMPL(msda, ...), which -Dmsda=msda_prev turns into msda_prev)
PREV_SCHEMA = """#include <torch/library.h>
TORCH_LIBRARY(msda_prev, m) {
  m.def("ms_deform_attn_forward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
        "Tensor sampling_loc, Tensor attn_weight) -> Tensor");
  m.def("ms_deform_attn_backward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
        "Tensor sampling_loc, Tensor attn_weight, Tensor grad_output) -> (Tensor, Tensor, Tensor)");
}
"""
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ---- the previous kernel ----

def export_prev(dest: Path) -> Path:
    """Write the previous kernel's sources into dest (from git, or copied from $MSDA_PREV_SRC)."""
    dest.mkdir(parents=True, exist_ok=True)
    given = os.environ.get("MSDA_PREV_SRC")
    for name in PREV_FILES:
        if given:
            text = (Path(given) / name).read_text()
        else:
            spec = f"{PREV_COMMIT}:models/dino/ops/src/{name}"
            done = subprocess.run(["git", "-C", str(REPO), "show", spec], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"git show {spec} failed ({done.stderr.strip()}); on a checkout without .git, "
                                   f"set MSDA_PREV_SRC to a folder written by `--export-prev DIR` elsewhere")
            text = done.stdout
        (dest / name).write_text(text)
    (dest / "msda_prev_schema.cpp").write_text(PREV_SCHEMA)
    return dest


def load_prev(build_dir: Path):
    """Build (just in time) and load the previous kernel; returns torch.ops.msda_prev."""
    import logging

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    src = export_prev(build_dir / "src")
    rename = ["-Dmsda=msda_prev"]
    cpp_extension.load(name="msda_prev", sources=[str(src / "msda_prev_schema.cpp"), str(src / "msda_cuda.cu")],
                       extra_cflags=["-O3"] + rename, extra_cuda_cflags=list(build_config.NVCC_FLAGS) + rename,
                       extra_include_paths=[str(src)], build_directory=str(build_dir), is_python_module=False)
    return torch.ops.msda_prev


# ---- problems ----

def level_starts(shapes):
    areas = torch.tensor([h * w for h, w in shapes])
    return torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])


def anchor_problem(device, dtype, seed=0):
    """10k queries, B=4, H=8, D=32, levels 64..8, P=4, locations uniform in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(64, 64), (32, 32), (16, 16), (8, 8)]
    s = sum(h * w for h, w in shapes)
    value = torch.randn(4, s, 8, 32, generator=g)
    loc = torch.rand(4, 10_000, 8, 4, 4, 2, generator=g)
    attn = torch.rand(4, 10_000, 8, 4, 4, generator=g).softmax(-1)
    return _on(device, dtype, value, shapes, loc, attn)


def encoder_problem(device, dtype, seed=0, image=(800, 1333)):
    """DINO's encoder: every token of the 4 levels (strides 8..64) queries 4 points per level near itself."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(math.ceil(image[0] / 8), math.ceil(image[1] / 8))]
    for _ in range(3):
        shapes.append((math.ceil(shapes[-1][0] / 2), math.ceil(shapes[-1][1] / 2)))
    s = sum(h * w for h, w in shapes)
    centres = torch.cat([torch.stack(torch.meshgrid((torch.arange(w) + 0.5) / w, (torch.arange(h) + 0.5) / h,
                                                    indexing="xy"), -1).reshape(-1, 2) for h, w in shapes])
    pixel = 1.0 / torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32)  # (L, 2) one pixel as (x, y)
    offsets = torch.randn(2, s, 8, 4, 4, 2, generator=g) * 2 * pixel[:, None, :]
    loc = centres[None, :, None, None, None, :] + offsets
    value = torch.randn(2, s, 8, 32, generator=g)
    attn = torch.rand(2, s, 8, 4, 4, generator=g).softmax(-1)
    return _on(device, dtype, value, shapes, loc, attn)


def _on(device, dtype, value, shapes, loc, attn):
    spatial = torch.tensor(shapes, dtype=torch.int64)
    return (value.to(device, dtype), spatial.to(device), level_starts(shapes).to(device), loc.to(device),
            attn.to(device))


PROBLEMS = {"anchor": anchor_problem, "encoder": encoder_problem}


# ---- timing ----

def median_ms(fn, warmup=3, repeats=15):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def op_passes(ops, args, grad_out):
    """fwd and fwd+bwd of a compiled msda library (forward op; forward op + backward op)."""
    return (lambda: ops.ms_deform_attn_forward(*args),
            lambda: (ops.ms_deform_attn_forward(*args), ops.ms_deform_attn_backward(*args, grad_out)))


def reference_passes(args, grad_out):
    value, shapes, starts, loc, attn = args
    cast = (value, shapes, starts, loc.to(value.dtype), attn.to(value.dtype))  # grid_sample wants one dtype

    def fwd():
        with torch.no_grad():
            return ms_deform_attn_pytorch(*cast)

    def fwd_bwd():
        leaves = [cast[0].detach().requires_grad_(), cast[3].detach().requires_grad_(),
                  cast[4].detach().requires_grad_()]
        out = ms_deform_attn_pytorch(leaves[0], shapes, starts, leaves[1], leaves[2])
        return torch.autograd.grad(out, leaves, grad_out)

    return fwd, fwd_bwd


def agreement(new, prev, args, grad_out):
    """Largest |new - prev| over the output and the three gradients (relative to their scale)."""
    a = [new.ms_deform_attn_forward(*args), *new.ms_deform_attn_backward(*args, grad_out)]
    b = [prev.ms_deform_attn_forward(*args), *prev.ms_deform_attn_backward(*args, grad_out)]
    return max(((x.float() - y.float()).abs().max() / y.float().abs().max().clamp_min(1e-12)).item()
               for x, y in zip(a, b))


def measure(new, prev, problem, dtype, repeats):
    """{pass: {backend: ms}} and the new/prev agreement for one problem and dtype."""
    args = PROBLEMS[problem]("cuda", DTYPES[dtype])
    n, lq, m = args[3].shape[:3]
    grad_out = torch.randn(n, lq, m * args[0].shape[-1], device="cuda").to(args[0].dtype)
    passes = {"new": op_passes(new, args, grad_out), "prev": op_passes(prev, args, grad_out),
              "pytorch": reference_passes(args, grad_out)}
    times = {p: {b: median_ms(fns[i], repeats=repeats) for b, fns in passes.items()}
             for i, p in enumerate(("fwd", "fwd+bwd"))}
    return times, agreement(new, prev, args, grad_out)


# ---- output ----

def format_rows(results):
    """results: [(problem, dtype, times, agreement)] -> table lines with the ratios (x = times faster)."""
    lines = ["| shape | dtype | pass | new ms | prev ms | pytorch ms | prev/new | pytorch/new | new vs prev |",
             "|---|---|---|---|---|---|---|---|---|"]
    for problem, dtype, times, agree in results:
        for p, t in times.items():
            lines.append(f"| {problem} | {dtype} | {p} | {t['new']:.3f} | {t['prev']:.3f} | {t['pytorch']:.3f} | "
                         f"{t['prev'] / t['new']:.2f}x | {t['pytorch'] / t['new']:.2f}x | {agree:.1e} |")
    return lines


def summary(results):
    """One line for gpu_check.sh: the new kernel's speedup over the previous one, fwd+bwd, per case."""
    parts = [f"{problem} {dtype} {times['fwd+bwd']['prev'] / times['fwd+bwd']['new']:.2f}x"
             for problem, dtype, times, _ in results]
    return "side-by-side: new vs previous kernel, fwd+bwd: " + ", ".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m models.dino.ops.side_by_side", description=__doc__.splitlines()[0])
    parser.add_argument("--export-prev", metavar="DIR", help="write the previous kernel's sources to DIR and exit")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--problems", default="anchor,encoder")
    parser.add_argument("--dtypes", default="fp32,bf16")
    args = parser.parse_args(argv)
    if args.export_prev:
        print(f"previous kernel ({PREV_COMMIT}) sources in {export_prev(Path(args.export_prev))}")
        return 0
    if not torch.cuda.is_available():
        print("side_by_side: no CUDA device visible (this compares GPU kernels)", file=sys.stderr)
        return 2
    if _build.load() is None or not _build.has_kernel("cuda"):
        print(f"side_by_side: this checkout's CUDA kernel is unavailable: {_build.load_error()}", file=sys.stderr)
        return 1
    _library.register()
    with tempfile.TemporaryDirectory(prefix="msda_prev_") as tmp:
        prev = load_prev(Path(tmp))
        print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}; previous kernel: {PREV_COMMIT}; "
              f"median of {args.repeats} runs")
        results = []
        for problem in args.problems.split(","):
            for dtype in args.dtypes.split(","):
                times, agree = measure(torch.ops.msda, prev, problem, dtype, args.repeats)
                results.append((problem, dtype, times, agree))
                print("\n".join(format_rows([results[-1]])[2 if len(results) > 1 else 0:]), flush=True)
    print(summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
