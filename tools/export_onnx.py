"""Export the eval model to ONNX (pure-PyTorch deformable attention) and check it with onnxruntime.

    python tools/export_onnx.py --checkpoint ckpt.pth --output model.onnx [-c CONFIG] \
        [--image-size H W] [--check IMAGE] [--postprocess] [--options KEY=VALUE ...]

-c is needed only without --checkpoint or for a checkpoint that does not store its config
(official DINO ones). The graph takes one normalised image 'images' (1, 3, H, W) of any height and
width (dynamic axes; batch 1, no padding mask: every pixel is valid) and returns 'pred_logits'
(1, Q, K) and 'pred_boxes' (1, Q, 4) normalised cxcywh; with --postprocess the model's own
post-processing is in the graph and it returns the top-k detections 'scores' (k,), 'labels' (k,)
(category ids) and 'boxes' (k, 4) xyxy in the input's pixels (k = num_select). The deformable attention
runs on the grid_sample path because the compiled msda op has no ONNX symbolic; the level sizes are
traced from the input's shape, so they follow its height and width. Export uses the TorchScript
exporter (torch.onnx.export dynamo=False, opset 17); its expected warnings are filtered (each with its
reason in EXPECTED_WARNINGS), any other warning is shown. docs/tools.md has an onnxruntime example
(tests/tools/test_export_onnx.py runs it at two sizes).

Trace size: default the size the config's val transform gives the --check image, else the config's
evaluation size (tools.common.config_image_size); an --image-size the val transform would not produce
is a warning naming both sizes. The --check image is never stretched: the val transform keeps its
aspect, and when the trace size has another aspect it is scaled to fit and padded at the bottom/right
(said in the output). The check runs PyTorch and onnxruntime on the same input (that image, else a
random tensor) at the trace size and at 3/4 of it (at least 96 px; another size, through the same
graph), compares the post-processed boxes and scores, and ends with one PASS or FAIL line per size.
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
    print_threads,
    val_size,
)
from util.cli import ArgumentParser, fail, run_guarded  # noqa: E402

OPSET = 17

# (category, message regex, why it is expected). Filtered during the export only; any other
# warning is shown as usual.
EXPECTED_WARNINGS = (
    (torch.jit.TracerWarning, r"Converting a tensor to a Python boolean|Iterating over a tensor might cause the "
                              r"trace to be incorrect",
     "input checks (enough encoder tokens, matching level sizes) run once while tracing, and the loop over the "
     "fixed number of decoder layers unrolls; the level sizes themselves are traced from the input's shape "
     "(the check at a second size confirms the graph follows it)"),
    (DeprecationWarning, r"You are using the legacy TorchScript-based ONNX export",
     "the TorchScript exporter is this tool's choice (dynamo=False) and its graph is checked with "
     "onnxruntime; the notice is about torch's default exporter"),
    (DeprecationWarning, r"The feature will be removed\. Please remove usage of this function",
     "raised inside torch's TorchScript exporter, which calls its own deprecated helpers (setup_onnx_logging); "
     "this code calls none of them"),
)
RAW_OUTPUTS = ("pred_logits", "pred_boxes")
DETECTIONS = ("scores", "labels", "boxes")  # the outputs of a graph with --postprocess


@contextmanager
def expected_warnings_filtered():
    """Silence EXPECTED_WARNINGS inside the block (others still show)."""
    with warnings.catch_warnings():
        for category, pattern, _why in EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=f"(?s).*({pattern})", category=category)
        yield


class ExportWrapper(nn.Module):
    """images (1, 3, H, W) -> (pred_logits (1, Q, K), pred_boxes (1, Q, 4)); tensors only, for tracing. With
    `postprocess` (the model's post-processor): -> (scores (k,), labels (k,), boxes (k, 4) xyxy in the input's
    pixels), the input's size read from its shape so that it follows a dynamic height and width."""

    def __init__(self, model: nn.Module, postprocess: Optional[nn.Module] = None):
        super().__init__()
        self.model = model
        self.postprocess = postprocess

    def forward(self, images: torch.Tensor):
        out = self.model(images)
        if self.postprocess is None:
            return out["pred_logits"], out["pred_boxes"]
        size = torch._shape_as_tensor(images)[-2:][None].to(images.device)  # (1, 2) h, w
        found = self.postprocess({"pred_logits": out["pred_logits"], "pred_boxes": out["pred_boxes"]}, size)[0]
        return found["scores"], found["labels"], found["boxes"]


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


def export(model: nn.Module, images: torch.Tensor, path: str, postprocess: Optional[nn.Module] = None) -> None:
    """Trace the model on `images` into an ONNX graph whose input height and width are dynamic."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with expected_warnings_filtered():
        torch.onnx.export(ExportWrapper(model, postprocess).eval(), (images,), path, dynamo=False,
                          opset_version=OPSET, input_names=["images"],
                          output_names=list(DETECTIONS if postprocess is not None else RAW_OUTPUTS),
                          dynamic_axes={"images": {2: "height", 3: "width"}})


def second_size(images: torch.Tensor) -> torch.Tensor:
    """`images` resized to 3/4 of its height and width, at least 96 px (so that the stride-64 level keeps more
    than one pixel, which GroupNorm needs): a second size for the check."""
    h, w = (max(96, round(3 * side / 4)) for side in images.shape[-2:])
    return torch.nn.functional.interpolate(images, size=(h, w), mode="bilinear", align_corners=False)


def _nearest_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) index of the row of b (M, C) nearest (L-inf) to each row of a (N, C)."""
    return torch.cdist(a.double(), b.double(), p=float("inf")).argmin(1)


def compare(model: nn.Module, postprocessors: Dict, path: str, images: torch.Tensor, atol: float = 1e-3,
            postprocessed: bool = False) -> Dict[str, float]:
    """Differences between onnxruntime and PyTorch on `images` (1, 3, H, W); see `verdict` for the test.

    The raw outputs are not required to match query by query. DINO's two-stage selection sorts the
    encoder proposals by score and gives the i-th one the i-th learned content query, so proposals
    whose scores tie, or differ by less than the ~1e-5 noise between the two runtimes, can swap
    places and then legitimately get other content queries: a few queries change and, through
    self-attention, all others move slightly (seen in most random-weight exports at 800x1333; with
    trained weights scores are further apart). The check therefore judges what users get: the
    sorted top-k scores ('post_scores') and each top-k box against the nearest one of the same
    label ('post_boxes_px'; detections within atol of the k-th score are left out, a tie there may
    select another query). For a raw graph it also reports, after pairing each ONNX query with its
    nearest PyTorch query, the largest 'logits' / 'boxes' differences and how many queries differ
    by more than atol ('queries_off', of 'queries'); 'top_k' is the number of detections compared.
    A `postprocessed` graph (--postprocess) returns the detections itself; they are compared with the
    PyTorch post-processor's.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    outputs = [torch.from_numpy(a) for a in session.run(None, {"images": images.numpy()})]
    if postprocessed:
        with torch.no_grad():
            post_t = dict(zip(DETECTIONS, ExportWrapper(model, postprocessors["bbox"])(images)))
        return _detection_diffs(post_t, dict(zip(DETECTIONS, outputs)), atol)
    logits_o, boxes_o = outputs
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
    return {**diffs, **_detection_diffs(post_t, post_o, atol)}


def _detection_diffs(post_t: Dict[str, torch.Tensor], post_o: Dict[str, torch.Tensor], atol: float) -> Dict:
    """'top_k', 'post_scores' (sorted scores) and 'post_boxes_px' (each ONNX box against the nearest PyTorch box
    of its label) of two post-processed detection sets."""
    diffs = {"top_k": int(len(post_o["scores"])),
             "post_scores": float((post_t["scores"].sort().values - post_o["scores"].sort().values).abs().max())}
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
    raw = ("" if "logits" not in diffs else
           f"; raw outputs, each ONNX query paired with its nearest PyTorch query: logits {diffs['logits']:.2e}, "
           f"boxes {diffs['boxes']:.2e}, {diffs['queries_off']} of {diffs['queries']} queries beyond {atol:g} "
           f"(allowed: near-tied two-stage proposals may swap queries, see docs/tools.md)")
    return passed, (
        f"{'PASS' if passed else 'FAIL'}: onnxruntime vs PyTorch on {what}: the top-{diffs['top_k']} detections' "
        f"scores differ by {diffs['post_scores']:.2e} (allowed {atol:g}) and boxes by {diffs['post_boxes_px']:.2e} px "
        f"(allowed {atol_px:.2f} px){raw}")


def get_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p, config_help="config the checkpoint was trained with (default: the one stored in the "
                                       "checkpoint)", with_device=False)
    p.add_argument("--checkpoint", default=None, help="checkpoint .pth (omit only to test the export path)")
    p.add_argument("--output", required=True, help="ONNX file to write")
    p.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="the size the graph is traced and checked at (its height and width stay dynamic; default: "
                        "the --check image's evaluation size, else the config's, e.g. 176 176 for the default "
                        "config and 800 1333 for COCO)")
    p.add_argument("--postprocess", action="store_true",
                   help="put the post-processing in the graph: outputs scores, labels and boxes (xyxy pixels of the "
                        "input) of the top num_select detections")
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
    run_guarded("export_onnx.py", lambda: print_threads(opts), TOOL_ERRORS)
    print(origin)
    for note in notes:
        print(note)
    select_msda_backend("pytorch")  # after load_tool_model applied msda_backend: the compiled op has no ONNX export
    h, w = images.shape[-2:]
    postprocess = postprocessors["bbox"] if opts.postprocess else None
    try:
        export(model, images, opts.output, postprocess)
    except ValueError as err:  # the model's own input checks, e.g. too few encoder tokens at a small size
        fail("export_onnx.py", f"export at {h}x{w} failed: {err}")
    outputs = ", ".join(DETECTIONS if opts.postprocess else RAW_OUTPUTS)
    print(f"wrote {opts.output} (opset {OPSET}, input 'images' 1x3xHxW with dynamic H and W, traced at {h}x{w}; "
          f"outputs {outputs})")
    if opts.no_check:
        return {}
    what = opts.check or f"a random 1x3x{h}x{w} input"
    results = []
    for name, inputs in ((what, images), (None, second_size(images))):
        diffs = compare(model, postprocessors, opts.output, inputs, opts.atol, postprocessed=opts.postprocess)
        name = name or f"the same resized to {inputs.shape[-2]}x{inputs.shape[-1]}"
        results.append((diffs, *verdict(diffs, opts.atol, inputs, name)))
    for _, _, line in results:
        print(line)
    if not all(passed for _, passed, _ in results):
        raise SystemExit(1)
    return results[0][0]


if __name__ == "__main__":
    main()
