"""Export the eval model to ONNX (pure-PyTorch deformable attention) and check it with onnxruntime.

    python tools/export_onnx.py --checkpoint ckpt.pth --output model.onnx [-c CONFIG] \
        [--image-size H W] [--check IMAGE] [--options KEY=VALUE ...]

-c is needed only without --checkpoint or for a checkpoint that does not store its config
(official DINO ones). The graph takes one normalised image batch 'images' (1, 3, H, W) at
the fixed export size (no padding mask: every pixel is valid) and returns 'pred_logits'
(1, Q, K) and 'pred_boxes' (1, Q, 4) normalised cxcywh; post-processing (top-k, scaling)
stays outside the graph. The deformable attention runs on the grid_sample path because
the compiled msda op has no ONNX symbolic. Export uses the TorchScript exporter
(torch.onnx.export dynamo=False, opset 17); its expected warnings are filtered (each with
its reason in EXPECTED_WARNINGS), any other warning is shown.

Export size: default the size the config's val transform gives the --check image, else
(max(data_aug_scales), data_aug_max_size), the config's evaluation size of a wide image; an
--image-size the val transform would not produce is a warning naming both sizes. The --check
image is never stretched: the val transform keeps its aspect, and when the export size has
another aspect it is scaled to fit and padded at the bottom/right (said in the output).
The check runs PyTorch and onnxruntime on the same input (that image, else a random
tensor), compares the post-processed boxes and scores, and ends with one PASS or FAIL line.
"""
import argparse
import os
import sys
import warnings
from contextlib import contextmanager
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

if __package__ in (None, ""):  # run as `python tools/x.py`: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools.common import (  # noqa: E402
    TOOL_ERRORS,
    ToolError,
    add_model_arguments,
    config_flags,
    config_image_size,
    load_tool_model,
    val_size,
)
from util.cli import ArgumentParser, fail, run_guarded  # noqa: E402

OPSET = 17

# (category, message regex, why it is expected). Filtered during the export only; any other
# warning is shown as usual.
EXPECTED_WARNINGS = (
    (torch.jit.TracerWarning, r"Converting a tensor to a Python|torch\.(as_)?tensor results are registered as "
                              r"constants|Iterating over a tensor might cause the trace to be incorrect",
     "shapes, level start indices and the top-k query count are traced as constants: the graph is fixed to "
     "the export size by design (module docstring)"),
    (DeprecationWarning, r"You are using the legacy TorchScript-based ONNX export",
     "the TorchScript exporter is this tool's choice (dynamo=False) and its graph is checked with "
     "onnxruntime; the notice is about torch's default exporter"),
    (DeprecationWarning, r"The feature will be removed\. Please remove usage of this function",
     "raised inside torch's TorchScript exporter, which calls its own deprecated helpers (setup_onnx_logging); "
     "this code calls none of them"),
)


@contextmanager
def expected_warnings_filtered():
    """Silence EXPECTED_WARNINGS inside the block (others still show)."""
    with warnings.catch_warnings():
        for category, pattern, _why in EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=f"(?s).*({pattern})", category=category)
        yield


class ExportWrapper(nn.Module):
    """images (B, 3, H, W) -> (pred_logits (B, Q, K), pred_boxes (B, Q, 4)); tensors only, for tracing."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        out = self.model(images)
        return out["pred_logits"], out["pred_boxes"]


def load_check_image(path: str, args) -> torch.Tensor:
    """(3, h, w): the --check image through the val transform (which keeps its aspect)."""
    from datasets.coco import load_rgb_image, transforms_from_args
    if not os.path.isfile(path):
        raise ToolError(f"--check {path}: no such file")
    tensor, _ = transforms_from_args("val", args)(load_rgb_image(path), {})
    return tensor


def fit_and_pad(image: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(1, 3, h, w): `image` (3, H0, W0) scaled to fit inside h x w keeping its aspect, zero-padded
    at the bottom/right (0 = the mean colour after normalisation; the graph has no mask, so the
    padding is seen as image)."""
    scale = min(h / image.shape[-2], w / image.shape[-1])
    size = (max(1, round(image.shape[-2] * scale)), max(1, round(image.shape[-1] * scale)))
    resized = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", align_corners=False)
    return torch.nn.functional.pad(resized, (0, w - size[1], 0, h - size[0]))


def export_input(opts, args) -> Tuple[torch.Tensor, List[str]]:
    """(the (1, 3, H, W) export/check input, notes to print). See the module docstring for the size."""
    notes = []
    image = load_check_image(opts.check, args) if opts.check else None
    if opts.image_size is None:
        h, w = tuple(image.shape[-2:]) if image is not None else config_image_size(args)
    else:
        h, w = opts.image_size
        if image is not None and tuple(image.shape[-2:]) != (h, w):
            notes.append(f"warning: the config evaluates {opts.check} at {image.shape[-2]}x{image.shape[-1]} "
                         f"(HxW), the export size is {h}x{w}: the check image is scaled to fit keeping its "
                         f"aspect and padded bottom/right (not stretched); leave out --image-size to export at "
                         f"its evaluation size")
        elif image is None and val_size(h, w, args) != (h, w):
            eh, ew = val_size(h, w, args)
            notes.append(f"warning: export size {h}x{w} (HxW) differs from the config's evaluation size: its val "
                         f"transform resizes a {h}x{w} image to {eh}x{ew} (data_aug_scales max "
                         f"{max(args.data_aug_scales)}, data_aug_max_size {args.data_aug_max_size}); the graph's "
                         f"detections will differ from main.py --eval's")
    if image is None:
        return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0)), notes
    return fit_and_pad(image, h, w), notes


def export(model: nn.Module, images: torch.Tensor, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with expected_warnings_filtered():
        torch.onnx.export(ExportWrapper(model).eval(), (images,), path, dynamo=False, opset_version=OPSET,
                          input_names=["images"], output_names=["pred_logits", "pred_boxes"])


def _nearest_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) index of the row of b (M, C) nearest (L-inf) to each row of a (N, C)."""
    return torch.cdist(a.double(), b.double(), p=float("inf")).argmin(1)


def compare(model: nn.Module, postprocessors: Dict, path: str, images: torch.Tensor,
            atol: float = 1e-3) -> Dict[str, float]:
    """Differences between onnxruntime and PyTorch on `images` (1, 3, H, W); see `verdict` for the test.

    The raw outputs are not required to match query by query. DINO's two-stage selection sorts the
    encoder proposals by score and gives the i-th one the i-th learned content query, so proposals
    whose scores tie, or differ by less than the ~1e-5 noise between the two runtimes, can swap
    places and then legitimately get other content queries: a few queries change and, through
    self-attention, all others move slightly (seen in most random-weight exports at 800x1333; with
    trained weights scores are further apart). The check therefore judges what users get: the
    sorted top-k scores ('post_scores') and each top-k box against the nearest one of the same
    label ('post_boxes_px'; detections within atol of the k-th score are left out, a tie there may
    select another query). For information it reports, after pairing each ONNX query with its
    nearest PyTorch query, the largest 'logits' / 'boxes' differences and how many queries differ
    by more than atol ('queries_off', of 'queries'); 'top_k' is the number of detections compared.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    logits_o, boxes_o = (torch.from_numpy(a) for a in session.run(None, {"images": images.numpy()}))
    with torch.no_grad():
        logits_t, boxes_t = ExportWrapper(model)(images)
    rows_o, rows_t = torch.cat([logits_o, boxes_o], -1)[0], torch.cat([logits_t, boxes_t], -1)[0]
    nearest = _nearest_rows(rows_o, rows_t)
    off = (rows_o - rows_t[nearest]).abs().amax(1)
    diffs = {"logits": float((logits_o[0] - logits_t[0, nearest]).abs().max()),
             "boxes": float((boxes_o[0] - boxes_t[0, nearest]).abs().max()), "queries_off": int((off > atol).sum()),
             "queries": int(rows_o.shape[0])}
    size = torch.tensor([images.shape[-2:]])
    post_t = postprocessors["bbox"]({"pred_logits": logits_t, "pred_boxes": boxes_t}, size)[0]
    post_o = postprocessors["bbox"]({"pred_logits": logits_o, "pred_boxes": boxes_o}, size)[0]
    diffs["top_k"] = int(len(post_o["scores"]))
    diffs["post_scores"] = float((post_t["scores"].sort().values - post_o["scores"].sort().values).abs().max())
    clear = post_o["scores"] > post_o["scores"].min() + atol
    big = 1e6  # separates labels: a detection only matches one of its own label
    dets_o = torch.cat([post_o["labels"][clear, None] * big, post_o["boxes"][clear]], 1)
    dets_t = torch.cat([post_t["labels"][:, None] * big, post_t["boxes"]], 1)
    diffs["post_boxes_px"] = float((dets_o - dets_t[_nearest_rows(dets_o, dets_t)]).abs().max()) if len(dets_o) else 0.0
    return diffs


def verdict(diffs: Dict[str, float], atol: float, images: torch.Tensor, what: str) -> Tuple[bool, str]:
    """(passed, the one PASS/FAIL line): the post-processed detections must agree, scores within
    atol and boxes within atol x the longer image side in pixels; the raw outputs are reported."""
    atol_px = atol * max(images.shape[-2:])
    passed = diffs["post_scores"] <= atol and diffs["post_boxes_px"] <= atol_px
    return passed, (
        f"{'PASS' if passed else 'FAIL'}: onnxruntime vs PyTorch on {what}: the top-{diffs['top_k']} detections' "
        f"scores differ by {diffs['post_scores']:.2e} (allowed {atol:g}) and boxes by {diffs['post_boxes_px']:.2e} px "
        f"(allowed {atol_px:.2f} px); raw outputs, each ONNX query paired with its nearest PyTorch query: logits "
        f"{diffs['logits']:.2e}, boxes {diffs['boxes']:.2e}, {diffs['queries_off']} of {diffs['queries']} queries "
        f"beyond {atol:g} (allowed: near-tied two-stage proposals may swap queries, see docs/tools.md)")


def get_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p, config_help="config the checkpoint was trained with (default: the one stored in the "
                                       "checkpoint)", with_device=False)
    p.add_argument("--checkpoint", default=None, help="checkpoint .pth (omit only to test the export path)")
    p.add_argument("--output", required=True, help="ONNX file to write")
    p.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="fixed input size of the graph (default: the --check image's evaluation size, else "
                        "max(data_aug_scales) x data_aug_max_size, 800 1333 for COCO)")
    p.add_argument("--check", default=None, metavar="IMAGE", help="compare ONNX vs PyTorch on this image")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    p.add_argument("--atol", type=float, default=1e-3,
                   help="tolerance on detection scores; on boxes, this x the longer image side in pixels")
    return p


def main(argv: Optional[List[str]] = None) -> Dict[str, float]:
    opts = get_parser().parse_args(argv)
    from models import select_msda_backend

    def load():
        args, model, postprocessors, origin = load_tool_model(
            opts.config_file, opts.checkpoint, opts.options, "cpu", config_flags(opts),
            error_file=opts.output + ".load_error.txt")
        return (args, model, postprocessors, origin, *export_input(opts, args))

    args, model, postprocessors, origin, images, notes = run_guarded("export_onnx.py", load, TOOL_ERRORS)
    print(origin)
    for note in notes:
        print(note)
    select_msda_backend("pytorch")  # after load_tool_model applied msda_backend: the compiled op has no ONNX export
    h, w = images.shape[-2:]
    try:
        export(model, images, opts.output)
    except ValueError as err:  # the model's own input checks, e.g. too few encoder tokens at a small size
        fail("export_onnx.py", f"export at {h}x{w} failed: {err}")
    print(f"wrote {opts.output} (opset {OPSET}, input 1x3x{h}x{w})")
    if opts.no_check:
        return {}
    diffs = compare(model, postprocessors, opts.output, images, opts.atol)
    passed, line = verdict(diffs, opts.atol, images, opts.check or f"a random 1x3x{h}x{w} input")
    if not passed:
        raise SystemExit(line)
    print(line)
    return diffs


if __name__ == "__main__":
    main()
