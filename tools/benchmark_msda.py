"""Benchmark multi-scale deformable attention backends at DINO's shapes.

    python tools/benchmark_msda.py --device cpu [--quick] [--dtype fp32|bf16|fp16]

Encoder: batch 2, 4 levels of an 800x1333 image (100x167, 50x84, 25x42, 13x21 = 22,223
tokens) queried by as many queries; decoder: 900 queries; 8 heads x 32 channels, 4 points.
--quick uses a 512x512 image. Reports the median time of forward (no grad) and
forward+backward, and the peak extra memory of forward+backward (CUDA: max_memory_allocated;
CPU: the running sum of allocations/frees recorded by torch.profiler).
"""
import contextlib
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # keep the profiler quiet
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.cli import add_threads_argument, start_threads  # noqa: E402
from models.dino.ops import (  # noqa: E402
    _build,
    _library,
    ms_deform_attn_pytorch,  # noqa: E402
)
from util.cli import ArgumentParser, fail, run_guarded  # noqa: E402
from util.slconfig import ConfigError  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@contextlib.contextmanager
def _native_stderr_silenced():
    """Kineto prints a `USDT: ... profiler_start/stop` line to fd 2 for every profile, whatever
    KINETO_LOG_LEVEL says; point fd 2 at /dev/null meanwhile (Python exceptions still propagate)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def level_shapes(h: int, w: int):
    """Feature map sizes at strides 8, 16, 32, 64 (the last is the extra conv of C5)."""
    shapes = [(math.ceil(h / 8), math.ceil(w / 8))]
    for _ in range(3):
        shapes.append((math.ceil(shapes[-1][0] / 2), math.ceil(shapes[-1][1] / 2)))
    return shapes


def make(shapes, n_queries, device, dtype, batch=2, heads=8, dim=32, points=4):
    spatial = torch.tensor(shapes, dtype=torch.int64, device=device)
    areas = spatial.prod(1)
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    s, nl = int(areas.sum()), len(shapes)
    value = torch.randn(batch, s, heads, dim, device=device).to(dtype)
    # DINO-like locations: a reference point per query (encoder: the query's own pixel centre;
    # decoder: anywhere) plus offsets of about 2 pixels of each level
    if n_queries == s:
        ref = torch.cat([torch.stack(torch.meshgrid((torch.arange(w, device=device) + 0.5) / w,
                                                    (torch.arange(h, device=device) + 0.5) / h, indexing="xy"), -1
                                     ).reshape(-1, 2) for h, w in shapes])
    else:
        ref = torch.rand(n_queries, 2, device=device)
    pixel = 1.0 / spatial.flip(1).float()  # (L, 2) size of one pixel as (x, y)
    offsets = torch.randn(batch, n_queries, heads, nl, points, 2, device=device) * 2 * pixel[:, None, :]
    loc = ref[None, :, None, None, None, :] + offsets
    attn = torch.rand(batch, n_queries, heads, nl, points, device=device).softmax(-1)
    return value, spatial, starts, loc, attn


def run_pytorch(value, spatial, starts, loc, attn):
    # the reference needs one dtype for grid_sample
    return ms_deform_attn_pytorch(value, spatial, starts, loc.to(value.dtype), attn.to(value.dtype))


def run_compiled(value, spatial, starts, loc, attn):
    return torch.ops.msda.ms_deform_attn_forward(value, spatial, starts, loc, attn)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def median_time(fn, device, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_extra_bytes(fn, device):
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with _native_stderr_silenced(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                            profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    running, peak = 0, 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return peak


def bench(name, fn, inputs, device, repeats):
    value, spatial, starts, loc, attn = inputs
    leaves = [value.clone().requires_grad_(), loc.clone().requires_grad_(), attn.clone().requires_grad_()]

    def fwd():
        with torch.no_grad():
            fn(value, spatial, starts, loc, attn)

    def fwd_bwd():
        out = fn(leaves[0], spatial, starts, leaves[1], leaves[2])
        torch.autograd.grad(out.sum(), leaves)

    return {"backend": name, "fwd_ms": 1e3 * median_time(fwd, device, repeats),
            "fwdbwd_ms": 1e3 * median_time(fwd_bwd, device, repeats),
            "peak_mib": peak_extra_bytes(fwd_bwd, device) / 2**20}


def main(argv=None):
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="512x512 image shapes (ends within a minute on 2 cores)")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="image size the level shapes come from (default 800 1333; 512 512 with --quick)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3; 5 with --quick)")
    add_threads_argument(parser, "all")
    args = parser.parse_args(argv)
    print(run_guarded("benchmark_msda.py", lambda: start_threads(args.threads, print), (ConfigError,))[1])
    if args.device == "cuda" and not torch.cuda.is_available():
        fail("benchmark_msda.py", "--device cuda but no CUDA device is visible (torch.cuda.is_available() is False)")
    dtype = DTYPES[args.dtype]
    repeats = args.repeats or (5 if args.quick else 3)
    h, w = args.image_size or ((512, 512) if args.quick else (800, 1333))
    shapes = level_shapes(h, w)
    tokens = sum(a * b for a, b in shapes)

    backends = [("pytorch", run_pytorch)]
    if _build.load() is not None and _build.has_kernel(args.device):
        _library.register()
        backends.append(("compiled", run_compiled))
    else:
        print(f"compiled backend unavailable on {args.device}: {_build.load_error() or 'no kernel for this device'}")

    print(f"device {args.device}, dtype {args.dtype}, image {h}x{w}, levels {shapes} = {tokens} tokens, "
          f"batch 2, 8 heads x 32 ch, 4 points, threads {torch.get_num_threads()}, median of {repeats}\n")
    print("| shape | queries | backend | forward ms | fwd+bwd ms | peak extra MiB (fwd+bwd) |")
    print("|---|---|---|---|---|---|")
    results = {}
    for shape_name, n_queries in (("encoder", tokens), ("decoder", 900)):
        torch.manual_seed(0)
        inputs = make(shapes, n_queries, args.device, dtype)
        for name, fn in backends:
            r = bench(name, fn, inputs, args.device, repeats)
            results[(shape_name, name)] = r
            print(f"| {shape_name} | {n_queries} | {name} | {r['fwd_ms']:.1f} | {r['fwdbwd_ms']:.1f} | "
                  f"{r['peak_mib']:.1f} |", flush=True)
    if ("encoder", "compiled") in results:
        ref, new = results[("encoder", "pytorch")], results[("encoder", "compiled")]
        print(f"\ncompiled/pytorch peak memory ratio (encoder): {new['peak_mib'] / ref['peak_mib']:.3f}")
        print(f"compiled/pytorch forward+backward speedup: {ref['fwdbwd_ms'] / new['fwdbwd_ms']:.2f}")
    else:
        print("\ncompiled/pytorch forward+backward speedup: n/a (compiled backend unavailable)")


if __name__ == "__main__":
    main()
