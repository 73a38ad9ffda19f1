"""Effective receptive fields of the encoder layers (AugDETR's Fig. 1), for one or two checkpoints.

    python tools/erf.py --checkpoint DINO.pth [--checkpoint AUGDETR.pth --labels DINO AugDETR] \
        --images FOLDER [--num-images 50] [--size 1024] [--level 0] [--position Y X] [--features] \
        --out erf.png [--json erf.json] [-c CONFIG --options ...]

For each encoder layer l, the score is one token of its output E_l (B, S, C): by default the centre token
of the finest level (`--level`, `--position Y X` in that level's token grid choose another), its channels
passed through ReLU and summed. Its gradient with respect to the input image is taken on N square,
unpadded images (the first N image files of --images in name order, resized to --size x --size bicubic,
ImageNet normalisation, batch 1, no augmentation); the positive part is summed over the colour channels
and averaged over the images (an image whose map has a NaN is skipped). This is the recipe of RepLKNet's
ERF script (Ding et al. 2022, after Luo et al. 2016), which also gives the analysis: the mean map is
log-scaled, log10(x + 1), and divided by its maximum; a layer's high-contribution area ratio at threshold
t is (side / H) * (side / W) for the smallest centred square (side 2i + 1, i >= 1) whose sum exceeds t
times the whole map's (None when no square below half the map's size reaches it), for t = 0.2, 0.3,
0.5, 0.99.

--features also takes the gradient with respect to the backbone features the encoder receives (its input
tokens after the input projections): what the encoder layers themselves add. Summed over channels, each
level's map is spread over the finest level's grid (nearest, divided by the tokens each covers, so the
mass stays) and the levels are added; the JSON also gives each level's share of the mass.

Writes --out, a PNG with one panel per encoder layer and one row per checkpoint (plus OUT_features.png
with --features), and --json (default: --out with .json) with every layer's area ratios. -c / --options /
the config flags are main.py's and apply to every checkpoint; this project's checkpoints store their
config, so -c is needed only for others (the earlier reproduction's are read as they are).
"""
import argparse
import inspect
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

if __package__ in (None, ""):  # run as `python tools/erf.py`: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools.common import ToolError, add_model_arguments, config_flags, load_tool_model  # noqa: E402

THRESHOLDS = (0.2, 0.3, 0.5, 0.99)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def area_ratio(erf: Tensor, threshold: float) -> Optional[float]:
    """The high-contribution area ratio of a (H, W) map at `threshold` (see the module doc): the smallest
    centred square of side 2i + 1 (i = 1, 2, ... < min(H, W) / 2) whose sum exceeds threshold * the map's
    sum, as (side / H) * (side / W); None when none does."""
    h, w = erf.shape
    cy, cx = h // 2, w // 2
    sums = F.pad(erf.double().cumsum(0).cumsum(1), (1, 0, 1, 0))  # sums[y, x] = erf[:y, :x].sum()
    half = torch.arange(1, math.ceil(min(h, w) / 2))
    top, bottom = (cy - half).clamp(min=0), (cy + half + 1).clamp(max=h)
    left, right = (cx - half).clamp(min=0), (cx + half + 1).clamp(max=w)
    inside = sums[bottom, right] - sums[top, right] - sums[bottom, left] + sums[top, left]
    reached = (inside > threshold * sums[-1, -1]).nonzero()
    if len(reached) == 0:
        return None
    side = 2 * int(half[reached[0, 0]]) + 1
    return (side / h) * (side / w)


def normalised(mean_map: Tensor) -> Tensor:
    """log10(x + 1) of a mean ERF map, divided by its maximum (all zeros stay zeros)."""
    logged = torch.log10(mean_map.double() + 1)
    top = logged.max()
    return logged / top if top > 0 else logged


def area_ratios(mean_map: Tensor) -> Dict[str, Optional[float]]:
    """{threshold: area ratio} of a mean map, on its normalised form as RepLKNet computes them."""
    erf = normalised(mean_map)
    return {str(t): area_ratio(erf, t) for t in THRESHOLDS}


class _EncoderDone(Exception):
    """Raised by the last encoder layer's hook: nothing after the encoder is needed."""


@dataclass
class EncoderTaps:
    """Forward hooks on model.transformer.encoder: its input tokens (B, S, C) and level shapes
    [(H_l, W_l)], and every layer's output (B, S, C); the forward stops after the last layer."""
    encoder_input: Optional[Tensor] = None
    shapes: List[Tuple[int, int]] = field(default_factory=list)
    outputs: List[Tensor] = field(default_factory=list)

    def attach(self, model: torch.nn.Module) -> list:
        encoder = model.transformer.encoder
        signature = inspect.signature(encoder.forward)

        def take_input(_module, args, kwargs):
            bound = signature.bind(*args, **kwargs).arguments
            self.encoder_input = bound["src"]
            self.shapes = [tuple(int(v) for v in hw) for hw in bound["spatial_shapes_list"]]

        def take_output(_module, _args, output, last=False):
            self.outputs.append(output)
            if last:
                raise _EncoderDone

        n = len(encoder.layers)
        return [encoder.register_forward_pre_hook(take_input, with_kwargs=True)] + [
            layer.register_forward_hook(lambda m, a, o, last=(i == n - 1): take_output(m, a, o, last))
            for i, layer in enumerate(encoder.layers)]


def run_encoder(model: torch.nn.Module, image: Tensor) -> EncoderTaps:
    """The model's forward on image (1, 3, H, W) (no padding) up to the last encoder layer."""
    taps = EncoderTaps()
    handles = taps.attach(model)
    try:
        model(image)
    except _EncoderDone:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if len(taps.outputs) != len(model.transformer.encoder.layers):
        raise ToolError("the encoder did not run every layer: is this a DINO-family model?")
    return taps


def token_index(shapes: Sequence[Tuple[int, int]], level: int, position: Optional[Tuple[int, int]]) -> int:
    """The flat token index of `position` (y, x) on level `level` (default: its centre, (H//2, W//2))."""
    if not -len(shapes) <= level < len(shapes):
        raise ToolError(f"--level {level}: the encoder has {len(shapes)} levels, use 0 .. {len(shapes) - 1}")
    level %= len(shapes)
    h, w = shapes[level]
    y, x = position if position is not None else (h // 2, w // 2)
    if not (0 <= y < h and 0 <= x < w):
        raise ToolError(f"--position {y} {x}: level {level} has {h} x {w} tokens")
    return sum(a * b for a, b in shapes[:level]) + y * w + x


def layer_scores(taps: EncoderTaps, token: int) -> List[Tensor]:
    """Per encoder layer, the score: its output at `token` of image 0, through ReLU, summed over channels."""
    return [out[0, token].relu().sum() for out in taps.outputs]


def layer_gradients(model, image: Tensor, level: int = 0, position: Optional[Tuple[int, int]] = None,
                    features: bool = False):
    """(per layer the gradient of its score w.r.t. image (3, H, W), per layer the one w.r.t. the encoder's
    input tokens (S, C) or None without `features`, the level shapes [(H_l, W_l)]). image (3, H, W)."""
    image = image[None].clone().requires_grad_(True)
    with torch.enable_grad():
        taps = run_encoder(model, image)
        scores = layer_scores(taps, token_index(taps.shapes, level, position))
        wrt = [image] + ([taps.encoder_input] if features else [])
        grads = [torch.autograd.grad(s, wrt, retain_graph=i < len(scores) - 1) for i, s in enumerate(scores)]
    image_grads = [g[0][0] for g in grads]
    feature_grads = [g[1][0] for g in grads] if features else None
    return image_grads, feature_grads, taps.shapes


def positive_map(grad: Tensor) -> Tensor:
    """The ERF map of one image gradient: its positive part summed over the colour channels, (3, H, W) -> (H, W)."""
    return grad.relu().sum(0)


def level_maps(token_grad: Tensor, shapes: Sequence[Tuple[int, int]]) -> List[Tensor]:
    """A gradient w.r.t. the encoder's input tokens (S, C) -> per level its positive part summed over
    channels, (H_l, W_l)."""
    per_token = token_grad.relu().sum(-1)
    return [m.view(h, w) for m, (h, w) in zip(per_token.split([h * w for h, w in shapes]), shapes)]


def on_finest_grid(maps: Sequence[Tensor]) -> Tensor:
    """Per-level maps -> one map on the first (finest) level's grid: each level spread by nearest
    upsampling and divided by how many fine cells one of its tokens covers (its mass kept), then added."""
    h, w = maps[0].shape
    total = torch.zeros(h, w, dtype=maps[0].dtype)
    for m in maps:
        spread = F.interpolate(m[None, None], size=(h, w), mode="nearest")[0, 0]
        total += spread * (m.numel() / (h * w))
    return total


class RunningMean:
    """The mean of maps over images; a map with a NaN is skipped (and counted)."""

    def __init__(self):
        self.total, self.count, self.skipped = None, 0, 0

    def add(self, value: Tensor) -> None:
        if torch.isnan(value).any():
            self.skipped += 1
            return
        value = value.detach().double()
        self.total = value if self.total is None else self.total + value
        self.count += 1

    @property
    def mean(self) -> Tensor:
        if self.count == 0:
            raise ToolError("every image gave a NaN map: nothing to average")
        return self.total / self.count


def list_images(folder: str, num_images: int) -> List[str]:
    """The first num_images image files of `folder` in name order."""
    if not os.path.isdir(folder):
        raise ToolError(f"--images {folder}: no such folder")
    files = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTS))
    if not files:
        raise ToolError(f"--images {folder}: no image files ({', '.join(IMAGE_EXTS)})")
    return [os.path.join(folder, n) for n in files[:num_images]]


def read_square(path: str, size: int) -> Tensor:
    """An image file resized to size x size (bicubic, aspect not kept), ImageNet-normalised (3, size, size)."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
    from tools.inference import read_image

    img = TF.resize(read_image(path), [size, size], interpolation=InterpolationMode.BICUBIC)
    return TF.normalize(TF.to_tensor(img), IMAGENET_MEAN, IMAGENET_STD)


@dataclass
class ModelERF:
    """One model's mean maps: image (per layer (H, W)) and, with features, per layer per level."""
    image: List[RunningMean]
    levels: Optional[List[List[RunningMean]]]
    shapes: List[Tuple[int, int]] = field(default_factory=list)


def measure(model, images: Sequence[Tensor], level: int = 0, position: Optional[Tuple[int, int]] = None,
            features: bool = False) -> ModelERF:
    """Mean ERF maps of every encoder layer of `model` (eval mode) over `images` (3, H, W) each."""
    n_layers = len(model.transformer.encoder.layers)
    result = ModelERF([RunningMean() for _ in range(n_layers)], None)
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    for image in images:
        image_grads, feature_grads, result.shapes = layer_gradients(
            model, image.to(device=device, dtype=dtype), level, position, features)
        for mean, grad in zip(result.image, image_grads):
            mean.add(positive_map(grad).cpu())
        if features:
            if result.levels is None:
                result.levels = [[RunningMean() for _ in result.shapes] for _ in range(n_layers)]
            for means, grad in zip(result.levels, feature_grads):
                for mean, m in zip(means, level_maps(grad.cpu(), result.shapes)):
                    mean.add(m)
    return result


def summarise(erf: ModelERF, layer_kinds: Sequence[str]) -> Dict:
    """The JSON entry of one model: per layer its kind and area ratios (and, with features, those of the
    features map and each level's share of its mass)."""
    layers = []
    for i, (mean, kind) in enumerate(zip(erf.image, layer_kinds)):
        entry = {"layer": i + 1, "kind": kind, "image": area_ratios(mean.mean)}
        if erf.levels is not None:
            maps = [m.mean for m in erf.levels[i]]
            total = sum(float(m.sum()) for m in maps) or 1.0
            entry["features"] = area_ratios(on_finest_grid(maps))
            entry["features_level_share"] = [float(m.sum()) / total for m in maps]
        layers.append(entry)
    return {"images_used": erf.image[0].count, "images_skipped": erf.image[0].skipped,
            "level_shapes": [list(s) for s in erf.shapes], "layers": layers}


def layer_kinds(model) -> List[str]:
    """'hybrid' for AugDETR's HAE layers (they have a dense branch), else 'deformable'."""
    return ["hybrid" if hasattr(layer, "dense_branch") else "deformable" for layer in model.transformer.encoder.layers]


def draw(rows: Sequence[Tuple[str, List[Tensor], Sequence[str]]], out: str, title: str) -> None:
    """One row per model (label, per layer its mean map, per layer its kind), one panel per layer, each
    map normalised as for the area ratios."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_cols = max(len(maps) for _, maps, _ in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(2.4 * n_cols + 0.8, 2.5 * len(rows)), squeeze=False)
    image = None
    for r, (label, maps, kinds) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(maps):
                ax.axis("off")
                continue
            image = ax.imshow(normalised(maps[c]).numpy(), cmap="RdYlGn", vmin=0.0, vmax=1.0)
            ax.set_title(f"Encoder {c + 1}" + (" (hybrid)" if kinds[c] == "hybrid" else ""), fontsize=9)
        axes[r][0].set_ylabel(label)
    fig.colorbar(image, ax=axes, orientation="horizontal", fraction=0.05, pad=0.04)
    fig.suptitle(title, fontsize=10, y=1.02)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--checkpoint", action="append", required=True,
                   help="a checkpoint; give it twice to compare two (e.g. DINO and AugDETR)")
    p.add_argument("--labels", nargs="+", help="one row label per checkpoint (default: the file names)")
    p.add_argument("--images", required=True, help="folder of images (COCO val2017, the synthetic set's val2017)")
    p.add_argument("--num-images", type=int, default=50, help="first N images in name order (default 50)")
    p.add_argument("--size", type=int, default=1024, help="square input side in pixels (default 1024)")
    p.add_argument("--level", type=int, default=0, help="level of the scored token (default 0, the finest)")
    p.add_argument("--position", type=int, nargs=2, metavar=("Y", "X"),
                   help="scored token in that level's grid (default its centre)")
    p.add_argument("--features", action="store_true",
                   help="also the gradient w.r.t. the backbone features the encoder receives")
    p.add_argument("--out", required=True, help="PNG to write (with --features also OUT_features.png)")
    p.add_argument("--json", help="JSON of the area ratios (default: OUT with .json)")
    return p


def check_options(opts) -> None:
    if opts.labels and len(opts.labels) != len(opts.checkpoint):
        raise ToolError(f"--labels: {len(opts.labels)} labels for {len(opts.checkpoint)} checkpoints")
    if opts.num_images < 1 or opts.size < 32:
        raise ToolError(f"--num-images {opts.num_images} / --size {opts.size}: need >= 1 image of >= 32 pixels")
    for path in opts.checkpoint:
        if not os.path.isfile(path):
            raise ToolError(f"--checkpoint {path}: no such file")


def run(opts) -> Dict:
    check_options(opts)
    files = list_images(opts.images, opts.num_images)
    images = [read_square(f, opts.size) for f in files]
    labels = opts.labels or [os.path.basename(p) for p in opts.checkpoint]
    position = tuple(opts.position) if opts.position else None
    report = {"recipe": {"score": "ReLU then sum over channels of one token of each encoder layer's output",
                         "level": opts.level, "position": list(position) if position else "centre",
                         "size": opts.size, "images": os.path.abspath(opts.images), "num_images": len(files),
                         "analysis": "log10(x + 1) / max; area ratio of the smallest centred square over t",
                         "thresholds": list(THRESHOLDS)}, "models": []}
    rows, feature_rows = [], []
    for label, checkpoint in zip(labels, opts.checkpoint):
        _, model, _, origin = load_tool_model(opts.config_file, checkpoint, opts.options, opts.device,
                                              config_flags(opts))
        print(f"{label}: {origin}")
        erf = measure(model, images, opts.level, position, opts.features)
        kinds = layer_kinds(model)
        report["models"].append(dict(label=label, checkpoint=os.path.abspath(checkpoint), config=origin,
                                     **summarise(erf, kinds)))
        rows.append((label, [m.mean for m in erf.image], kinds))
        if opts.features:
            feature_rows.append((label, [on_finest_grid([m.mean for m in lv]) for lv in erf.levels], kinds))
    what = f"level {opts.level} token {'centre' if position is None else position}, {len(files)} images"
    draw(rows, opts.out, f"ERF w.r.t. the image ({what})")
    if opts.features:
        draw(feature_rows, _features_png(opts.out), f"ERF w.r.t. the encoder's input features ({what})")
    json_path = opts.json or os.path.splitext(opts.out)[0] + ".json"
    with open(json_path, "w") as f:
        json.dump(report, f, indent=1)
    print(table(report))
    print(f"wrote {opts.out}" + (f", {_features_png(opts.out)}" if opts.features else "") + f" and {json_path}")
    return report


def _features_png(out: str) -> str:
    stem, ext = os.path.splitext(out)
    return f"{stem}_features{ext or '.png'}"


def table(report: Dict) -> str:
    """The area ratios as text: one line per model and layer."""
    lines = ["model  layer  kind        " + "  ".join(f"t={t:<5}" for t in THRESHOLDS)]
    for entry in report["models"]:
        for layer in entry["layers"]:
            cells = "  ".join("  -    " if v is None else f"{v:.4f} " for v in layer["image"].values())
            lines.append(f"{entry['label']:<6} {layer['layer']:<6} {layer['kind']:<11} {cells}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> Dict:
    opts = get_parser().parse_args(argv)
    from util.checkpoint import CheckpointError
    from util.slconfig import ConfigError
    try:
        return run(opts)
    except (ToolError, CheckpointError, ConfigError) as err:
        sys.exit(f"erf.py: error: {err}")


if __name__ == "__main__":
    main()
