"""Golden numerics: name-keyed weights, the measured quantities and their comparison.

How the reference values in tests/data/golden/<case>.json are made (see test_golden.py,
`python tests/models/test_golden.py --regenerate [CASE ...]`):
  * model: the detector's tiny model (tests/tiny_configs.py TINY_MODELS: small sizes, ResNet-18,
    pure-PyTorch deformable attention) plus the case's switches (CASES);
  * weights: `init_by_name` (tests/name_keyed_weights.py) fills every floating tensor from a generator
    seeded by its state_dict key, so a refactor that keeps the keys keeps the golden values;
  * inputs: golden_batch() (two images from a seeded generator, three boxes); training mode draws the
    denoising noise after torch.manual_seed(NOISE_SEED);
  * measured (`measure`): for every output tensor its L1 and L2 norms and a slice of its first SLICE
    values; every loss term; the L2 norms of the gradients of the weighted total loss for the whole
    model and for GRAD_PARAMS; in eval mode also the post-processed scores/boxes (top-k sums, which do
    not depend on the order of near-tied entries) with and without NMS.

Precision: evaluation is measured in float32, as the model runs. Training (forward, losses, gradients) is
measured in float64. Gradients are not continuous: a ReLU whose input is within rounding distance of 0,
or a sampling location within rounding distance of a pixel boundary (bilinear sampling's gradient jumps
there), sends a gradient through another path when the last bit of an input changes, and these tiny
models have thousands of both. In float32 the last bits differ between CPUs (vector widths, summation
order), so some gradient norms moved by up to 1.7e-3 on another CPU (case emca: a ReLU input of the
box head at -7e-7, on the first decoder layer's output of a matched query, changed sides; 1e-7 noise on
the backbone reproduces the other CPU's numbers exactly); in float64 the rounding is 1e-16 and no such
point is that close. test_golden.py checks this condition for every case (`CONDITION_NOISE`), so a
regeneration keeps it.

Tolerance (`compare`): each scalar within RTOL = 1e-5 of its reference (relative), slices
element-wise within RTOL of the slice's largest magnitude. test_golden.py checks both ends:
last-bit noise on the output of every layer at once passes, 1e-3 on the output of any single layer
fails.
"""
import contextlib
import math
import zlib
from typing import Dict, List, NamedTuple, Optional

import torch
from torch import Tensor, nn

from name_keyed_weights import init_by_name
from tiny_configs import TINY_SWIN, tiny_args

RTOL = 1e-5
NOISE_SEED = 1234
SLICE = 12
NMS_IOU = 0.05
NMS_SELECT = 70  # every (query, class) pair of the 10 x 7, so that NMS has overlapping boxes to remove
MODES = ("eval", "train")
DTYPES = {"eval": torch.float32, "train": torch.float64}
# relative noise on every layer's output at once that stands for a CPU's last-bit differences, per
# measured precision; a well-conditioned case moves by less than RTOL / 3 under it
CONDITION_NOISE = {torch.float32: 1e-7, torch.float64: 1e-11}


class Case(NamedTuple):
    """A golden case: a detector's tiny model with config switches (and, for timm backbones, the
    backbone at the tiny width of tests/data/dino_swin_tiny)."""
    detector: str
    switches: dict
    tiny_backbone: Optional[Dict] = None


CASES: Dict[str, Case] = {
    "dino": Case("dino", {}),
    "hae": Case("dino", dict(use_hae=True, num_hae_layers=1)),
    "emca": Case("dino", dict(use_emca=True)),
    "augdetr": Case("dino", dict(use_hae=True, use_emca=True, num_hae_layers=1)),
    "aligndetr": Case("dino", dict(criterion_type="aligndetr", o2m_k=[2, 2, 1])),
    "swin": Case("dino", dict(backbone="swin_T_224_1k"), tiny_backbone=TINY_SWIN),
    "detr": Case("detr", {}),
    "detr_pre_norm": Case("detr", dict(pre_norm=True)),
    "deformable_detr": Case("deformable_detr", {}),
    "deformable_detr_refine": Case("deformable_detr", dict(with_box_refine=True)),
    "deformable_detr_two_stage": Case("deformable_detr", dict(with_box_refine=True, two_stage=True)),
    "deformable_detr_augdetr": Case("deformable_detr", dict(use_hae=True, use_emca=True, num_hae_layers=1)),
    # DDQ-DETR with NMS thresholds at which the tiny model's boxes overlap: the encoder NMS changes the
    # training queries, the decoder NMS suppresses queries in both modes (no IoU within 5e-5 of a threshold)
    "ddq": Case("ddq_detr", dict(ddq_enc_nms_iou=0.3, ddq_dec_nms_iou=0.1)),
    "ddq_augdetr": Case("ddq_detr", dict(ddq_enc_nms_iou=0.3, ddq_dec_nms_iou=0.1, use_hae=True, use_emca=True,
                                         num_hae_layers=1)),
}
# gradient norms recorded besides the total (prefix match on parameter names; the sum of squares
# of all matching gradients): backbone, input projection, encoder, two-stage head, decoder, heads
GRAD_PARAMS = ["backbone.0.body.layer2.", "backbone.0.body.layer4.", "backbone.0.body.layers.", "backbone.0.norm",
               "input_proj.", "transformer.level_embed", "transformer.encoder.layers.0.",
               "transformer.encoder.layers.1.", "transformer.enc_output.", "transformer.enc_out_bbox_embed.",
               "transformer.enc_out_class_embed.", "transformer.tgt_embed.", "transformer.decoder.layers.0.",
               "transformer.decoder.layers.1.", "transformer.decoder.ref_point_head.", "bbox_embed.", "class_embed.",
               "label_enc."]
# recorded only for models that have them (Deformable DETR's queries, reference points and two-stage embedding)
OWN_GRAD_PARAMS = ["query_embed.", "transformer.reference_points.", "transformer.pos_trans."]


@contextlib.contextmanager
def tiny_backbone(case: Case):
    """Inside, the case's timm backbone is built at its tiny width."""
    if case.tiny_backbone is None:
        yield
        return
    from models.common.backbones.table import BACKBONES
    name = case.switches["backbone"]
    spec = BACKBONES[name]
    BACKBONES[name] = spec.resized(**case.tiny_backbone)
    try:
        yield
    finally:
        BACKBONES[name] = spec


def build(case: str = "dino", **overrides):
    """(model, criterion, postprocessors) of a golden case with name-keyed weights."""
    from models import build_model
    spec = CASES[case]
    with tiny_backbone(spec):
        model, criterion, post = build_model(tiny_args(spec.detector, **dict(spec.switches, **overrides)))
    return init_by_name(model), criterion, post


IMAGE_SIZES = [(128, 160), (96, 128)]


def golden_batch(dtype: torch.dtype = torch.float32):
    """Two padded images, IMAGE_SIZES (h, w), pixels from a generator seeded with 0, and 3 boxes.

    Large enough that the coarsest level (stride 64: 2 x 3 tokens) gives GroupNorm more than a
    couple of values per group: with 1 x 2 maps its output is a near-sign function and the
    gradients are ill-conditioned."""
    from util.misc import nested_tensor_from_tensor_list
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(3, h, w, generator=g).to(dtype) for h, w in IMAGE_SIZES]
    targets = [dict(labels=torch.tensor([1, 3]), boxes=torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.3, 0.1, 0.1]])),
               dict(labels=torch.tensor([2]), boxes=torch.tensor([[0.4, 0.6, 0.3, 0.2]]))]
    for t in targets:
        t["boxes"] = t["boxes"].to(dtype)
    return nested_tensor_from_tensor_list(images), targets


def _summary(t: Tensor) -> Dict:
    t = t.detach().double()
    return {"l1": t.abs().sum().item(), "l2": t.norm().item(), "slice": t.flatten()[:SLICE].tolist()}


def output_summaries(out: Dict) -> Dict[str, Dict]:
    """Every tensor of DINO's output dict (denoising part included), by path."""
    found: Dict[str, Dict] = {}

    def walk(prefix: str, obj) -> None:
        if isinstance(obj, Tensor) and obj.is_floating_point():
            found[prefix] = _summary(obj)
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(f"{prefix}.{i}", v)

    walk("", out)
    return found


def total_loss(criterion, losses: Dict[str, Tensor]) -> Tensor:
    return sum(losses[k] * w for k, w in criterion.weight_dict.items() if k in losses)


def named_parameters_by_name(model: nn.Module) -> Dict[str, nn.Parameter]:
    """Parameters under their smallest name: a shared one (bbox_embed.0 = transformer.decoder.
    bbox_embed.0) is named independently of which module registered it first."""
    first: Dict[int, str] = {}
    params = dict(model.named_parameters(remove_duplicate=False))
    for name in sorted(params):
        first.setdefault(id(params[name]), name)
    return {name: params[name] for name in first.values()}


def grad_norms(model: nn.Module) -> Dict[str, float]:
    grads = {n: p.grad.double() for n, p in named_parameters_by_name(model).items() if p.grad is not None}
    out = {"total": math.sqrt(sum(g.square().sum().item() for g in grads.values()))}
    own = [p for p in OWN_GRAD_PARAMS if any(n.startswith(p) for n in named_parameters_by_name(model))]
    for prefix in GRAD_PARAMS + own:
        out[prefix] = math.sqrt(sum(g.square().sum().item() for n, g in grads.items() if n.startswith(prefix)))
    return out


def postprocess_summary(outputs: Dict, post, nms_iou: float) -> Dict[str, float]:
    """Scores and boxes of the case's kind of post-processor (PostProcess: the top-k (query, class) pairs;
    DETR's SoftmaxPostProcess: one per query), with `nms_iou` > 0 per-class NMS, as sums per image."""
    pp = type(post)(post.num_select if nms_iou <= 0 else NMS_SELECT, nms_iou)
    results = pp(outputs, torch.tensor([[480, 640], [300, 400]]))
    out = {}
    for i, r in enumerate(results):
        out[f"image{i}.count"] = float(len(r["scores"]))
        out[f"image{i}.scores_sum"] = r["scores"].double().sum().item()
        out[f"image{i}.boxes_l1"] = r["boxes"].double().abs().sum().item()
    return out


@contextlib.contextmanager
def precision(model: nn.Module, dtype: torch.dtype):
    """Inside, the model's tensors and new tensors (torch's default dtype) are of `dtype`; after, as before."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    model.to(dtype)
    try:
        yield
    finally:
        model.to(torch.float32)
        torch.set_default_dtype(default)


def measure(model: nn.Module, criterion, post, mode: str) -> Dict:
    """The golden quantities of one forward (and, in training mode, backward) pass, in DTYPES[mode]."""
    with precision(model, DTYPES[mode]):
        return _measure(model, criterion, post, mode)


def _measure(model: nn.Module, criterion, post, mode: str) -> Dict:
    samples, targets = golden_batch(DTYPES[mode])
    if mode == "eval":
        model.eval()
        criterion.eval()
        with torch.no_grad():
            out = model(samples)
        return {"outputs": output_summaries(out),
                "postprocess": postprocess_summary(out, post["bbox"], -1),
                "postprocess_nms": postprocess_summary(out, post["bbox"], NMS_IOU)}
    model.train()
    criterion.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(NOISE_SEED)  # the denoising noise
    out = model(samples, targets)
    losses = criterion(out, targets)
    loss = total_loss(criterion, losses)
    loss.backward()
    return {"outputs": output_summaries(out), "losses": {k: float(v.detach()) for k, v in losses.items()},
            "total_loss": loss.item(), "grad_norms": grad_norms(model)}


def deviations(got, want, path: str = ""):
    """(path, relative deviation) for every reference value: |got - want| / |want| for scalars,
    / max|slice| for the elements of a slice; inf where the structure differs."""
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            missing = sorted(set(want) - set(got or {}))
            extra = sorted(set(got or {}) - set(want))
            yield f"{path}: keys differ (missing {missing}, new {extra})", math.inf
            return
        for k in want:
            yield from deviations(got[k], want[k], f"{path}.{k}" if path else k)
    elif isinstance(want, list):
        if len(got) != len(want):
            yield f"{path}: {len(got)} values, expected {len(want)}", math.inf
            return
        scale = max((abs(w) for w in want), default=0.0)
        for i, (g, w) in enumerate(zip(got, want)):
            yield f"{path}[{i}]: {g!r} != {w!r}", _relative(g, w, scale)
    else:
        yield f"{path}: {got!r} != {want!r}", _relative(got, want, abs(want))


def _relative(got: float, want: float, scale: float) -> float:
    if got == want or (math.isnan(got) and math.isnan(want)):
        return 0.0
    return abs(got - want) / scale if scale > 0 else math.inf


def compare(got, want) -> List[str]:
    """The differences between two measure() results beyond RTOL, as readable lines."""
    return [f"{line} (rel {dev:.2e})" for line, dev in deviations(got, want) if dev > RTOL]


def max_deviation(got, want) -> float:
    return max((dev for _, dev in deviations(got, want)), default=0.0)


def rounded(obj, digits: int = 9):
    """Floats cut to `digits` significant digits (the JSON file stays small; 1e-9 << RTOL)."""
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rounded(v, digits) for v in obj]
    return float(f"{obj:.{digits}g}")


class OutputNoise:
    """Forward hooks that multiply module outputs by (1 + rel * n), n ~ N(0, 1) per element from a
    generator seeded by the module's name: a relative change of every output value.

    `called(model, run)` lists the modules whose forward returned a tensor (or a tuple starting
    with one, as nn.MultiheadAttention) during run(); `apply(model, names, rel)` perturbs those.
    """

    @staticmethod
    def _first_tensor(output):
        """The tensor output of a module, or the first of a plain tuple (nn.MultiheadAttention's); structured
        outputs (named tuples such as EMCA's EncoderMemories, a restacking of encoder outputs) are skipped."""
        if isinstance(output, Tensor):
            return output
        if type(output) is tuple and output and isinstance(output[0], Tensor):
            return output[0]
        return None

    @classmethod
    def called(cls, model: nn.Module, run) -> List[str]:
        seen: List[str] = []
        handles = []
        for name, module in model.named_modules():
            def hook(mod, args, output, name=name):
                t = cls._first_tensor(output)
                if name and name not in seen and t is not None and t.is_floating_point():
                    seen.append(name)
            handles.append(module.register_forward_hook(hook))
        try:
            run()
        finally:
            for h in handles:
                h.remove()
        return seen

    @classmethod
    def apply(cls, model: nn.Module, names: List[str], rel: float, seed: int = 0):
        """Register the hooks (noise drawn per module from `seed` and its name); returns their handles
        (call .remove() on each to undo)."""
        handles = []
        for name in names:
            def hook(mod, args, output, name=name):
                t = cls._first_tensor(output)
                g = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()) if seed else
                                                  zlib.crc32(name.encode()))
                noisy = t * (1 + rel * torch.randn(t.shape, generator=g, dtype=torch.float64).to(t))
                return noisy if isinstance(output, Tensor) else (noisy, *output[1:])
            handles.append(model.get_submodule(name).register_forward_hook(hook))
        return handles


def max_deviation_under_noise(case: str, mode: str, rel: float, seeds) -> float:
    """The largest deviation of a case's measurement when `rel` noise is put on every layer's output at
    once, over the noise seeds."""
    model, criterion, post = build(case)
    base = measure(model, criterion, post, mode)
    names = OutputNoise.called(model, lambda: measure(model, criterion, post, mode))
    worst = 0.0
    for seed in seeds:
        handles = OutputNoise.apply(model, names, rel, seed)
        try:
            worst = max(worst, max_deviation(measure(model, criterion, post, mode), base))
        finally:
            for h in handles:
                h.remove()
    return worst
