"""Golden numerics: name-keyed weights, the measured quantities and their comparison.

How the reference values in tests/data/golden_numerics.json are made (see test_golden.py,
`python tests/models/test_golden.py --regenerate`):
  * model: tests/tiny_configs.py MODEL (DINO_4scale.py with small sizes, ResNet-18, width
    32, 2 + 2 layers, 10 queries, pure-PyTorch deformable attention) plus each variant's
    switches (VARIANTS);
  * weights: `init_by_name` fills every floating tensor of the state_dict from a generator
    seeded with zlib.crc32 of its state_dict key, so the values depend on the key, shape and
    module kind only, never on construction order: a refactor that keeps the keys keeps
    the golden values;
  * inputs: tiny_configs.tiny_batch(0) (two images from a seeded generator, three boxes);
    training mode draws the denoising noise after torch.manual_seed(NOISE_SEED);
  * measured (`measure`): for every output tensor its L1 and L2 norms and a slice of its first
    SLICE values; every loss term; the L2 norms of the gradients of the weighted total loss for
    the whole model and for GRAD_PARAMS; in eval mode also the post-processed scores/boxes
    (top-k sums, which do not depend on the order of near-tied entries) with and without NMS.

Tolerance (`compare`): each scalar within RTOL = 1e-5 of its reference (relative), slices
element-wise within RTOL of the slice's largest magnitude. test_golden.py checks both ends:
noise of 1e-6 (relative) on the output of every layer at once passes, 1e-3 on the output of
any single layer fails.
"""
import math
import zlib
from typing import Dict, List

import torch
from torch import Tensor, nn

from name_keyed_weights import init_by_name
from tiny_configs import tiny_args

RTOL = 1e-5
NOISE_SEED = 1234
SLICE = 12
NMS_IOU = 0.05
NMS_SELECT = 70  # every (query, class) pair of the 10 x 7, so that NMS has overlapping boxes to remove

VARIANTS: Dict[str, dict] = {
    "dino": {},
    "hae": dict(use_hae=True, num_hae_layers=1),
    "emca": dict(use_emca=True),
    "augdetr": dict(use_hae=True, use_emca=True, num_hae_layers=1),
}
# gradient norms recorded besides the total (prefix match on parameter names; the sum of squares
# of all matching gradients): backbone, input projection, encoder, two-stage head, decoder, heads
GRAD_PARAMS = ["backbone.0.body.layer2.", "backbone.0.body.layer4.", "input_proj.", "transformer.level_embed",
               "transformer.encoder.layers.0.", "transformer.encoder.layers.1.", "transformer.enc_output.",
               "transformer.enc_out_bbox_embed.", "transformer.enc_out_class_embed.", "transformer.tgt_embed.",
               "transformer.decoder.layers.0.", "transformer.decoder.layers.1.", "transformer.decoder.ref_point_head.",
               "bbox_embed.", "class_embed.", "label_enc."]


def build(variant: str = "dino", **overrides):
    """(model, criterion, postprocessors) of a golden variant with name-keyed weights."""
    from models import build_model
    model, criterion, post = build_model(tiny_args(**dict(VARIANTS[variant], **overrides)))
    return init_by_name(model), criterion, post


IMAGE_SIZES = [(128, 160), (96, 128)]


def golden_batch():
    """Two padded images, IMAGE_SIZES (h, w), pixels from a generator seeded with 0, and 3 boxes.

    Large enough that the coarsest level (stride 64: 2 x 3 tokens) gives GroupNorm more than a
    couple of values per group: with 1 x 2 maps its output is a near-sign function and the
    gradients are ill-conditioned."""
    from util.misc import nested_tensor_from_tensor_list
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(3, h, w, generator=g) for h, w in IMAGE_SIZES]
    targets = [dict(labels=torch.tensor([1, 3]), boxes=torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.3, 0.1, 0.1]])),
               dict(labels=torch.tensor([2]), boxes=torch.tensor([[0.4, 0.6, 0.3, 0.2]]))]
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
    for prefix in GRAD_PARAMS:
        out[prefix] = math.sqrt(sum(g.square().sum().item() for n, g in grads.items() if n.startswith(prefix)))
    return out


def postprocess_summary(outputs: Dict, post, nms_iou: float) -> Dict[str, float]:
    """Top-k scores and boxes of PostProcess (with `nms_iou` > 0: per-class NMS) as sums per image."""
    from models.common.postprocess import PostProcess
    pp = PostProcess(post.num_select if nms_iou <= 0 else NMS_SELECT, nms_iou)
    results = pp(outputs, torch.tensor([[480, 640], [300, 400]]))
    out = {}
    for i, r in enumerate(results):
        out[f"image{i}.count"] = float(len(r["scores"]))
        out[f"image{i}.scores_sum"] = r["scores"].double().sum().item()
        out[f"image{i}.boxes_l1"] = r["boxes"].double().abs().sum().item()
    return out


def measure(model: nn.Module, criterion, post, mode: str) -> Dict:
    """The golden quantities of one forward (and, in training mode, backward) pass."""
    samples, targets = golden_batch()
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
    def apply(cls, model: nn.Module, names: List[str], rel: float):
        """Register the hooks; returns their handles (call .remove() on each to undo)."""
        handles = []
        for name in names:
            def hook(mod, args, output, name=name):
                t = cls._first_tensor(output)
                g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
                noisy = t * (1 + rel * torch.randn(t.shape, generator=g).to(t))
                return noisy if isinstance(output, Tensor) else (noisy, *output[1:])
            handles.append(model.get_submodule(name).register_forward_hook(hook))
        return handles
