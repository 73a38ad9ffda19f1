"""Model cost: parameters, GFLOPs and batch-1 inference FPS; or AugDETR's training-step cost per variant.

Inference mode (default), at the config's evaluation size unless --image-size H W is given (176 x 176 for the
default config's synthetic images, 800 x 1333 for DINO_4scale.py):
    python tools/benchmark.py -c config/DINO/DINO_4scale.py --runs 2 [--use_hae --use_emca]
Training-step mode:
    python tools/benchmark.py --train-step --variants dino,hae,emca,augdetr [--image-size 800 1333] [-c CONFIG]
        [--device cpu|cuda]: per variant the median step time and peak memory at that size, and
        the augdetr/dino time ratio with both variants' figures
    python tools/benchmark.py --train-step --variants dino,detr,ddq_detr+augdetr --image-size 800 1333
        a variant may also be another detector: its modelname (its defaults file, detr -> config/DETR/detr_r50.py)
        or a config file (NAME=FILE names the row), optionally followed by +hae, +emca or +augdetr, timed in
        the same process, each with its ratio to dino. --eval-step also times an evaluation forward per
        variant; --regions NAME,... reports the share of one profiled training step spent in those
        torch.profiler record_function regions (default: DDQ-DETR's ddq.encoder_nms and ddq.decoder_nms).

FLOPs are counted with torch.utils.flop_counter.FlopCounterMode (matmuls, convolutions,
SDPA) plus two formulas registered here for deformable attention:
  * compiled op msda::ms_deform_attn_forward: 10 FLOPs per (batch, query, head, level,
    point, channel) = bilinear interpolation (4 multiply-adds) + attention weighting (1);
  * pure-PyTorch path aten.grid_sampler_2d: 8 FLOPs per output element (the 4
    multiply-adds of bilinear interpolation); the weighting there is an elementwise
    multiply + sum, which FlopCounterMode does not count.
Normalisation, softmax, activations and other elementwise ops are not counted.
"GFLOPs" printed = counted FLOPs / 2 / 1e9, i.e. multiply-adds, the fvcore convention
the DETR papers report.

Counting only (--flops-only, optionally over --backbones a,b,...): the same count on fake
tensors (torch's FakeTensorMode: shapes, dtypes and devices, no data), so nothing is allocated
or computed and a Swin-L or ConvNeXt-XL DINO at 800x1333 takes seconds; FPS is not measured.
    python tools/benchmark.py -c config/DINO/DINO_4scale_swin.py --flops-only --backbones swin_T_224_1k,swin_L_384_22k
"""
import argparse
import contextlib
import os
import statistics
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch._subclasses.fake_tensor as fake_tensor
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

if __package__ in (None, ""):  # run as `python tools/x.py`: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from engine.cli import DEFAULT_CONFIG  # noqa: E402
from tools.common import (  # noqa: E402
    TOOL_ERRORS,
    ToolError,
    add_model_arguments,
    build_eval_model,
    config_flags,
    config_image_size,
    count_parameters,
    print_threads,
    tool_args,
)
from util.cli import ArgumentParser, fail, run_guarded  # noqa: E402

# --train-step's variants: the config-key flags each adds to the config
VARIANTS = {"dino": {}, "hae": {"use_hae": True}, "emca": {"use_emca": True},
            "augdetr": {"use_hae": True, "use_emca": True}}
TRAIN_STEP_DEFAULTS = dict(config="config/DINO/DINO_4scale.py", image_size=(320, 480), repeats=3, boxes=5)


def msda_op_flops(value, spatial_shapes, level_start_index, sampling_loc, attn_weight, out_shape=None, **_):
    """value (B, S, H, D), attn_weight (B, Lq, H_loc, L, P) -> 10 FLOPs per (B, Lq, H, L, P, D)."""
    b, _, heads, dim = value
    _, lq, _, levels, points = attn_weight
    return 10 * b * lq * heads * levels * points * dim


def grid_sample_flops(inp, grid, *_, out_shape=None, **__):
    """input (N, C, H, W), grid (N, Ho, Wo, 2) -> 8 FLOPs per output element (N, C, Ho, Wo)."""
    n, c = inp[0], inp[1]
    return 8 * n * c * grid[1] * grid[2]


def flop_mapping() -> Dict:
    """FlopCounterMode's custom formulas. The msda backend is resolved first: the compiled library
    defines torch.ops.msda only once loaded, and a mapping made before that (the first count in a
    process with the auto backend) silently left the deformable attention out."""
    from models import msda_backend_info
    msda_backend_info()  # resolves (and loads, or JIT-builds) the backend of each visible device
    mapping = {torch.ops.aten.grid_sampler_2d: grid_sample_flops}
    try:
        mapping[torch.ops.msda.ms_deform_attn_forward] = msda_op_flops
    except (AttributeError, RuntimeError):
        pass  # compiled library not loaded in this process: only the PyTorch path can run
    return mapping


def dummy_batch(h: int, w: int, batch: int, device: torch.device, boxes: int = 0, num_classes: int = 91):
    """A random normalised image batch (B, 3, h, w) and, if boxes > 0, random targets for training."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, h, w, generator=g).to(device)
    targets = []
    for _ in range(batch if boxes else 0):
        cxcy = torch.rand(boxes, 2, generator=g) * 0.6 + 0.2
        wh = torch.rand(boxes, 2, generator=g) * 0.2 + 0.05
        targets.append({"boxes": torch.cat([cxcy, wh], 1).to(device),
                        "labels": torch.randint(1, num_classes, (boxes,), generator=g).to(device)})
    return images, targets


def count_gflops(model: torch.nn.Module, images: torch.Tensor) -> float:
    """Multiply-add GFLOPs (counted FLOPs / 2e9) of one eval forward."""
    counter = FlopCounterMode(display=False, custom_mapping=flop_mapping())
    # FlopCounterMode's module tracker hooks autograd on tensors that require grad, which fails for
    # parameters passed as module inputs under no_grad; switch requires_grad off while counting
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with torch.no_grad(), counter:
            model(images)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    return counter.get_total_flops() / 2e9


def fake_model(args) -> Tuple[torch.nn.Module, FakeTensorMode, int, int]:
    """(model in eval mode whose parameters and buffers are fake tensors on args.device, its fake
    mode, trainable and total parameter counts). Nothing is allocated and no weight initialised.

    The model is built on the meta device and its tensors wrapped as fake tensors on the real
    device. Building it under FakeTensorMode instead fails: DINO clones its heads with
    copy.deepcopy, and a deep-copied fake tensor belongs to a new fake mode, which the forward
    refuses ("Mixing fake modes"). Plain meta tensors fail in the forward: the msda backend of a
    meta tensor is the PyTorch path, which reads the level shapes as values (tolist()).
    """
    from models import build_model
    with torch.device("meta"):
        model = build_model(args)[0].eval()
    trainable, total = count_parameters(model)
    mode = FakeTensorMode()
    device = torch.device(args.device)

    def fake(t):
        return mode.fake_tensor_converter.from_meta_and_device(mode, t, device)

    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None:  # requires_grad off: see count_gflops
                module._parameters[name] = torch.nn.Parameter(fake(p), requires_grad=False)
        for name, b in module._buffers.items():
            if b is not None:
                module._buffers[name] = fake(b)
    return model, mode, trainable, total


@contextlib.contextmanager
def _constant_small_tensors(limit: int = 64):
    """Fake tensors made from Python numbers keep their values up to `limit` elements (torch's
    default: 1), so the level shapes (L, 2) and start indices (L,) that the model builds from the
    feature sizes can still be read with tolist() (the hybrid encoder, EMCA, the PyTorch msda path).
    Only tensors computed from such constants alone carry values; activations never do."""
    old = fake_tensor.CONSTANT_NUMEL_LIMIT
    fake_tensor.CONSTANT_NUMEL_LIMIT = limit
    try:
        yield
    finally:
        fake_tensor.CONSTANT_NUMEL_LIMIT = old


def count_gflops_fake(args, h: int, w: int) -> Dict:
    """Parameters and multiply-add GFLOPs of one eval forward of args' model on a (1, 3, h, w)
    image, counted on fake tensors; the same FlopCounterMode count as count_gflops on real ones."""
    model, mode, trainable, total = fake_model(args)
    counter = FlopCounterMode(display=False, custom_mapping=flop_mapping())
    try:
        with _constant_small_tensors(), mode, torch.no_grad(), counter:
            model(torch.empty(1, 3, h, w, device=args.device))
    except fake_tensor.DataDependentOutputException as err:
        raise ToolError(f"--flops-only: the forward reads a tensor's values ({err}); count on real tensors "
                        f"instead: leave out --flops-only") from None
    return {"params_trainable": trainable, "params_total": total, "gflops": counter.get_total_flops() / 2e9}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_fps(model: torch.nn.Module, images: torch.Tensor, warmup: int, runs: int) -> float:
    device = images.device
    with torch.no_grad():
        for _ in range(warmup):
            model(images)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(runs):
            model(images)
        _sync(device)
    return runs / (time.perf_counter() - t0)


def run_inference(opts) -> Dict:
    args = tool_args(opts.config_file, opts.options, opts.device, config_flags(opts))
    size_origin = " (--image-size)" if opts.image_size else " (the config's evaluation size; --image-size H W: another)"
    opts.image_size = opts.image_size or config_image_size(args)
    model, _ = build_eval_model(args)
    device = torch.device(args.device)
    images, _ = dummy_batch(*opts.image_size, 1, device)
    trainable, total = count_parameters(model)
    gflops = count_gflops(model, images)
    fps = measure_fps(model, images, opts.warmup, opts.runs)
    from models import msda_backend_info
    res = {"config": opts.config_file, "use_hae": bool(vars(args).get("use_hae")),
           "use_emca": bool(vars(args).get("use_emca")),
           "image_size": list(opts.image_size), "device": str(device), "params_trainable": trainable,
           "params_total": total, "gflops": gflops, "fps": fps,
           "msda_backend": msda_backend_info()[device.type]["backend"]}
    print(f"config {opts.config_file}  hae={res['use_hae']} emca={res['use_emca']}  input 1x3x{opts.image_size[0]}x"
          f"{opts.image_size[1]}{size_origin}  device {device} (msda backend {res['msda_backend']}, "
          f"{torch.get_num_threads()} CPU threads)")
    print(f"parameters: {trainable / 1e6:.2f}M trainable, {total / 1e6:.2f}M total")
    print(f"GFLOPs (multiply-adds, fvcore convention = FLOPs/2): {gflops:.1f}")
    print(f"inference FPS at batch 1: {fps:.3f} ({opts.runs} timed runs after {opts.warmup} warm-up)")
    return res


def run_flops_only(opts):
    """Parameters and GFLOPs counted on fake tensors: one result dict, or with --backbones a list
    (one per backbone, the config's other keys unchanged) and a markdown table."""
    from models import msda_backend_info
    rows = []
    for name in opts.backbones or [None]:
        options = dict(opts.options or {}, **({} if name is None else {"backbone": name}))
        args = tool_args(opts.config_file, options, opts.device, config_flags(opts))
        h, w = opts.image_size = opts.image_size or config_image_size(args)
        res = {"config": opts.config_file, "backbone": args.backbone, "use_hae": bool(vars(args).get("use_hae")),
               "use_emca": bool(vars(args).get("use_emca")), "image_size": [h, w], "device": args.device,
               **count_gflops_fake(args, h, w), "msda_backend": msda_backend_info()[args.device]["backend"]}
        rows.append(res)
    r = rows[0]
    print(f"config {opts.config_file}  hae={r['use_hae']} emca={r['use_emca']}  input 1x3x{h}x{w}  device "
          f"{r['device']} (msda backend {r['msda_backend']})  counted on fake tensors, FPS not measured")
    if opts.backbones is None:
        print(f"backbone {r['backbone']}  parameters: {r['params_trainable'] / 1e6:.2f}M trainable, "
              f"{r['params_total'] / 1e6:.2f}M total")
        print(f"GFLOPs (multiply-adds, fvcore convention = FLOPs/2): {r['gflops']:.1f}")
        return r
    print("| backbone | params (M) | GFLOPs |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['backbone']} | {r['params_total'] / 1e6:.1f} | {r['gflops']:.1f} |")
    return rows


def peak_memory_step(step, device: torch.device) -> int:
    """Peak bytes allocated while running step(): max_memory_allocated on CUDA, profiler on CPU."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    # replay the allocation/free events in order; the running maximum is the peak above the start.
    # Self usage only: an op's total includes its children's allocations (linear -> addmm), so
    # summing totals would count nested allocations twice or more.
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    current = peak = 0
    for e in events:
        current += e.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def variant_config(variant: str, config_file: str) -> Tuple[str, str, Dict[str, Any]]:
    """A --variants entry -> (row name, config file, config-key flags it adds). The entry is NAME optionally
    followed by +hae / +emca / +augdetr (their flags on top); NAME is an AugDETR variant of VARIANTS
    (config_file with its flags), a registered detector's modelname (its defaults file), or a config file
    (FILE or LABEL=FILE). ValueError (one line) for anything else."""
    from models import DETECTORS
    base, *extras = variant.split("+")
    flags: Dict[str, Any] = {}
    for extra in extras:
        if extra not in VARIANTS:
            raise ValueError(f"--variants {variant}: +{extra} is not one of {', '.join('+' + v for v in VARIANTS)}")
        flags.update(VARIANTS[extra])
    if base in VARIANTS:
        return variant, config_file, dict(VARIANTS[base], **flags)
    label, _, path = base.rpartition("=")
    if path.endswith(".py"):
        if not os.path.isfile(path):
            raise ValueError(f"--variants {variant}: config file {path} not found")
        return (label + variant[len(base):] if label else variant), path, flags
    if base in DETECTORS:
        return variant, DETECTORS[base].defaults_file, flags
    raise ValueError(f"--variants {variant}: choose from {', '.join(VARIANTS)}, a modelname "
                     f"({', '.join(sorted(DETECTORS))}) or a config file (NAME=FILE.py)")


def make_train_step(name: str, opts, device: torch.device, h: int, w: int):
    """Build one variant (opts.variant_configs[name]: config file, flags) and return (training step
    function, model, evaluation forward function)."""
    from engine import total_loss
    from models import build_model
    config_file, flags = opts.variant_configs[name]
    args = tool_args(config_file, opts.options, opts.device, dict(config_flags(opts), **flags))
    torch.manual_seed(0)
    model, criterion, _ = build_model(args)
    model.to(device).train()
    criterion.to(device)
    images, targets = dummy_batch(h, w, 1, device, boxes=TRAIN_STEP_DEFAULTS["boxes"], num_classes=args.num_classes)

    def step():
        model.train()
        model.zero_grad(set_to_none=True)
        total_loss(criterion(model(images, targets), targets), criterion.weight_dict)[0].backward()

    @torch.no_grad()
    def eval_step():
        model.eval()
        model(images)

    return step, model, eval_step


def region_shares(step, regions: List[str]) -> Dict[str, float]:
    """Share of one profiled run of step() spent in each record_function region of `regions` (its
    inclusive CPU time over the step's; regions not run are left out). On CUDA the regions' host time."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        step()
        total_us = (time.perf_counter() - t0) * 1e6
    spent: Dict[str, float] = {}
    for event in prof.key_averages():
        if event.key in regions:
            spent[event.key] = event.cpu_time_total / total_us
    return spent


def run_train_step(opts) -> List[Dict]:
    """Time one training step per variant. The variants' repeats are interleaved (round
    robin), so that a change of machine load during the run affects every variant alike."""
    device = torch.device(opts.device)
    h, w = opts.image_size or config_image_size(tool_args(opts.config_file, opts.options, opts.device,
                                                          config_flags(opts)))
    steps = {name: make_train_step(name, opts, device, h, w) for name in opts.variants}
    kinds = {"train": 0, "eval": 2} if opts.eval_step else {"train": 0}
    for parts in steps.values():
        for index in kinds.values():
            parts[index]()  # warm-up (allocator, kernel selection)
    times: Dict[Tuple[str, str], List[float]] = {(name, kind): [] for name in steps for kind in kinds}
    for _ in range(opts.repeats):
        for name, parts in steps.items():
            for kind, index in kinds.items():
                _sync(device)
                t0 = time.perf_counter()
                parts[index]()
                _sync(device)
                times[name, kind].append(time.perf_counter() - t0)
    rows = []
    for name, (step, model, _) in steps.items():
        trainable, total = count_parameters(model)
        rows.append({"variant": name, "image_size": [h, w], "time_s": statistics.median(times[name, "train"]),
                     "peak_mib": peak_memory_step(step, device) / 2**20,
                     "params_total": total, "params_trainable": trainable})
        if opts.eval_step:
            rows[-1]["eval_time_s"] = statistics.median(times[name, "eval"])
        shares = region_shares(step, opts.regions) if opts.regions else {}
        if shares:
            rows[-1]["region_share"] = shares
    base = next((r for r in rows if r["variant"] == "dino"), rows[0])
    if base["variant"] != "dino":  # the table's column says dino
        print(f"(ratios are to {base['variant']}, the first variant)")
    print(f"train step: {opts.config_file}, image {h}x{w}, batch 1, {TRAIN_STEP_DEFAULTS['boxes']} boxes, "
          f"device {device} ({torch.get_num_threads()} CPU threads), median of {opts.repeats} interleaved repeats")
    print("| variant | fwd+bwd time (s) | vs dino | peak memory (MiB) | params (M) | params delta vs dino |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['time_s']:.3f} | {r['time_s'] / base['time_s']:.2f}x | {r['peak_mib']:.0f} | "
              f"{r['params_total'] / 1e6:.3f} | {r['params_total'] - base['params_total']:+,d} |")
    by = {r["variant"]: r for r in rows}
    for r in rows:  # the other detectors (a modelname or config file), against the base row
        config_file = opts.variant_configs[r["variant"]][0]
        if r["variant"] not in VARIANTS and r is not base:
            print(f"{r['variant']}/{base['variant']} train-step time ratio at {h}x{w}: "
                  f"{r['time_s'] / base['time_s']:.3f} ({r['variant']} {config_file} {r['time_s']:.3f} s, "
                  f"{r['peak_mib']:.0f} MiB; {base['variant']} {base['time_s']:.3f} s, {base['peak_mib']:.0f} MiB)")
    if "augdetr" in by and "dino" in by:
        d, a = by["dino"], by["augdetr"]
        print(f"augdetr/dino train-step time ratio at {h}x{w}: {a['time_s'] / d['time_s']:.3f} "
              f"(dino {d['time_s']:.3f} s, {d['peak_mib']:.0f} MiB; "
              f"augdetr {a['time_s']:.3f} s, {a['peak_mib']:.0f} MiB)")
    print_eval_and_regions(rows, base)
    return rows


def print_eval_and_regions(rows: List[Dict], base: Dict) -> None:
    """The evaluation-forward times and their ratios (--eval-step), the regions' shares (--regions)."""
    if "eval_time_s" in base:
        print("| variant | eval forward time (s) | vs " + base["variant"] + " |")
        print("|---|---|---|")
        for r in rows:
            print(f"| {r['variant']} | {r['eval_time_s']:.3f} | {r['eval_time_s'] / base['eval_time_s']:.2f}x |")
    for r in rows:
        for region, share in r.get("region_share", {}).items():
            print(f"{r['variant']}: {region} {100 * share:.1f}% of a profiled training step")


def get_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p, threads="all", config_help="config (default: DINO_synthetic.py for inference, "
                                                      "DINO_4scale.py for --train-step)")
    p.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="input size (default: the config's evaluation size, e.g. 176 176 for the default config and "
                        "800 1333 for DINO_4scale.py; --train-step without -c: 320 480)")
    p.add_argument("--runs", type=int, default=10, help="timed inference runs (default 10)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs (default 1)")
    p.add_argument("--msda-backend", default=None, choices=["auto", "compiled", "pytorch"],
                   help="deformable attention backend (default: MSDA_BACKEND or auto)")
    p.add_argument("--flops-only", action="store_true",
                   help="parameters and GFLOPs only, counted on fake tensors (no weights, no computation: seconds "
                        "for Swin-L); FPS is not measured")
    p.add_argument("--backbones", default=None, metavar="NAME[,NAME...]",
                   help="with --flops-only: one count per backbone (option backbone=NAME), printed as a table")
    p.add_argument("--train-step", action="store_true", help="time one training step per variant instead")
    p.add_argument("--variants", default="dino,hae,emca,augdetr",
                   help=f"comma list of {', '.join(VARIANTS)}, registered modelnames or config files, each "
                        f"optionally +hae / +emca / +augdetr (train-step mode)")
    p.add_argument("--eval-step", action="store_true",
                   help="train-step mode: also time an evaluation forward (no_grad, eval mode) per variant")
    p.add_argument("--regions", default="ddq.encoder_nms,ddq.decoder_nms", metavar="NAME[,NAME...]",
                   help="train-step mode: record_function regions whose share of one profiled training step is "
                        "reported (empty: none)")
    p.add_argument("--repeats", type=int, default=TRAIN_STEP_DEFAULTS["repeats"],
                   help="timed training steps per variant; the median is reported (default 3)")
    return p


def main(argv: Optional[List[str]] = None):
    opts = get_parser().parse_args(argv)
    if opts.runs < 1 or opts.repeats < 1:
        fail("benchmark.py", "--runs and --repeats must be >= 1")
    run_guarded("benchmark.py", lambda: print_threads(opts), TOOL_ERRORS)
    if opts.msda_backend:  # a config key: the model builder applies it
        opts.options = dict(opts.options or {}, msda_backend=opts.msda_backend)
    if opts.backbones is not None:
        opts.backbones = [b.strip() for b in opts.backbones.split(",") if b.strip()]
        if not opts.flops_only or not opts.backbones or opts.train_step:
            fail("benchmark.py", "--backbones takes a comma list of backbone names and needs --flops-only (without "
                                 "--train-step)")
    if opts.flops_only and opts.train_step:
        fail("benchmark.py", "--flops-only counts an inference forward; leave out --train-step")
    if opts.train_step:
        entries = [v.strip() for v in opts.variants.split(",") if v.strip()]
        if not entries:
            fail("benchmark.py", f"--variants (empty): choose from {', '.join(VARIANTS)}")
        if opts.config_file is None:  # the AugDETR cost table's setting: DINO-4scale R50 at a CPU-sized 320x480
            opts.config_file = TRAIN_STEP_DEFAULTS["config"]
            opts.image_size = opts.image_size or TRAIN_STEP_DEFAULTS["image_size"]
        try:
            resolved = [variant_config(v, opts.config_file) for v in entries]
        except ValueError as err:
            fail("benchmark.py", str(err))
        opts.variants = [name for name, _, _ in resolved]
        opts.variant_configs = {name: (config, flags) for name, config, flags in resolved}
        opts.regions = [r.strip() for r in opts.regions.split(",") if r.strip()]
        return run_guarded("benchmark.py", lambda: run_train_step(opts), TOOL_ERRORS)
    opts.config_file = opts.config_file or DEFAULT_CONFIG
    return run_guarded("benchmark.py", lambda: run_flops_only(opts) if opts.flops_only else run_inference(opts),
                       TOOL_ERRORS)


if __name__ == "__main__":
    main()
