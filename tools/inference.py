"""Run a trained DINO / AugDETR checkpoint on images; write COCO-format detections and drawn PNGs.

    python tools/inference.py --checkpoint ckpt.pth --input IMAGE_OR_FOLDER --output out/ \
        [-c CONFIG] [--threshold 0.2] [--no_nms] [--names-from instances_val2017.json | --names names.txt]
        [--gt instances_val2017.json]

-c is needed only for a checkpoint that does not store its config (official DINO ones); this
project's checkpoints build their model from the stored config, and an explicit -c that does not
fit is one line naming the checkpoint's config. Writes OUTPUT/detections.json (COCO result format,
as main.py's results.json: category_id, bbox xywh in original pixels, score, plus file_name and
category_name; image_id is the COCO id when --names-from's annotation file lists the images, else
the file's index in sorted order) with every detection >= --threshold, and OUTPUT/<image stem>.png
drawn by util/visualize.py (a colour per class, labels on filled backgrounds, small images upscaled,
same-class duplicates removed by NMS for the picture only unless --no_nms; with --gt the ground truth
dashed underneath; a picture without a box above the threshold says so and gives the highest score).
Class names: --names-from / --names / --gt, else the ones the checkpoint stores (main.py keeps its
training data's categories in every checkpoint), else 'class N'. Images get the
dataset's val transform (resize to max(data_aug_scales), longest side <= data_aug_max_size,
ImageNet normalisation) and the model's own post-processor.
The loop and the JSON writer are main.py's (engine.predict, engine.write_coco_results), one
image per batch. Works with this project's checkpoints and official DINO ones (util.checkpoint
reads both).
"""
import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torchvision.ops import box_convert

if __package__ in (None, ""):  # run as `python tools/x.py`: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools.common import (  # noqa: E402
    TOOL_ERRORS,
    ToolError,
    add_model_arguments,
    config_flags,
    load_tool_model,
    print_threads,
)
from util.checkpoint import missing_checkpoint_error  # noqa: E402
from util.cli import ArgumentParser, run_guarded  # noqa: E402
from util.visualize import DISPLAY_NMS_IOU, GroundTruth, draw_prediction  # noqa: E402

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# The default model (python main.py, 12 epochs on the synthetic shapes) scores its true objects
# from about 0.2 to 0.6; at 0.3 half of them were missing from its pictures. 0.2 with the
# display NMS shows them without clutter (tuned on its val images, see docs/tools.md).
DEFAULT_THRESHOLD = 0.2


class InputError(ToolError):
    """Bad command-line input (one-line message)."""


def list_images(path: str) -> List[str]:
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        files = sorted(os.path.join(path, n) for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTS))
        if not files:
            raise InputError(f"--input {path}: folder has no images ({', '.join(IMAGE_EXTS)})")
        return files
    raise InputError(f"--input {path}: no such file or folder")


def load_names(names_from: Optional[str] = None, names_file: Optional[str] = None) -> Dict[int, str]:
    """Class id -> name from a COCO annotation JSON ('categories') or a names file.

    A names file is either JSON ({"1": "person", ...} or a list indexed by id) or plain
    text with one name per line, line N (from 0) naming class id N.
    """
    if names_from:
        try:
            cats = read_annotation(names_from)["categories"]
            return {int(c["id"]): str(c["name"]) for c in cats}
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"--names-from {names_from}: cannot read 'categories' with id/name ({err})") from None
    if names_file:
        try:
            with open(names_file) as f:
                text = f.read()
        except OSError as err:
            raise InputError(f"--names {names_file}: {err.strerror}") from None
        if names_file.endswith(".json"):
            try:
                data = json.loads(text)
                items = data.items() if isinstance(data, dict) else enumerate(data)
                return {int(k): str(v) for k, v in items}
            except (ValueError, AttributeError) as err:
                raise InputError(f"--names {names_file}: expected a JSON object id->name or a list ({err})") from None
        return {i: line.strip() for i, line in enumerate(text.splitlines())}
    return {}


_annotations: Dict[tuple, dict] = {}


def read_annotation(path: str) -> dict:
    """A COCO annotation file's JSON, read once for names and image ids (cached while the file is unchanged)."""
    try:
        stat = os.stat(path)
        key = (os.path.abspath(path), stat.st_mtime_ns, stat.st_size)
        if key not in _annotations:
            with open(path) as f:
                _annotations.clear()  # keep one file: a COCO annotation file can be large
                _annotations[key] = json.load(f)
    except (OSError, ValueError) as err:
        raise InputError(f"--names-from {path}: cannot read it as COCO JSON ({err})") from None
    return _annotations[key]


def coco_image_ids(names_from: Optional[str], files: List[str]) -> Optional[List[int]]:
    """The COCO image id of each file (matched by file name to the annotation file's 'images'), or
    None when there is no annotation file or it lists none of the files (ids are then the input
    order). Some but not all listed: InputError, as ids would mix the two numberings."""
    if not names_from:
        return None
    by_name = {os.path.basename(str(im.get("file_name", ""))): im.get("id")
               for im in read_annotation(names_from).get("images") or [] if isinstance(im, dict)}
    ids = [by_name.get(os.path.basename(p)) for p in files]
    missing = [os.path.basename(p) for p, i in zip(files, ids) if i is None]
    if len(missing) == len(files):
        return None
    if missing:
        raise InputError(f"--names-from {names_from} lists {len(files) - len(missing)} of the {len(files)} input "
                         f"images but not {missing[0]}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
                         + "; pass only images it lists, or --names FILE for names with image_id = input order")
    return [int(i) for i in ids]


def names_origin(opts, annotation: Optional[str], names: Dict[int, str]) -> str:
    """Where the class names came from, for the tool's output."""
    if opts.names or annotation:
        return opts.names or annotation
    return "the checkpoint (its training data's categories)" if names else "none known: 'class N'"


def class_name(names: Dict[int, str], label: int) -> str:
    return names.get(label) or f"class {label}"


class ImageFiles(torch.utils.data.Dataset):
    """Image files under the val transform, shaped like a COCO dataset's samples for engine.predict:
    (image (3, H, W) float, {'image_id': file index, 'orig_size': (h, w) of the file})."""

    def __init__(self, files: List[str], transform):
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        img = read_image(self.files[i])
        image, _ = self.transform(img, {})
        return image, {"image_id": torch.tensor(i), "orig_size": torch.tensor([img.height, img.width])}


def read_image(path: str):
    """The file as an RGB PIL image; an unreadable file is an InputError naming it."""
    from datasets.coco import load_rgb_image

    try:
        return load_rgb_image(path)
    except Exception as err:  # noqa: BLE001 - any unreadable image: name the file
        raise InputError(f"cannot read image {path}: {err}") from None


def predict_files(model, postprocessors, transform, files: List[str], device: torch.device) -> Dict[int, np.ndarray]:
    """engine.predict over the files, one image per batch (no padding, as for a single image):
    file index -> (K, 6) float32 [x, y, w, h, score, label], boxes in the file's pixels."""
    from engine import predict
    from util.misc import collate_fn

    loader = torch.utils.data.DataLoader(ImageFiles(files, transform), batch_size=1, shuffle=False,
                                         collate_fn=collate_fn)
    return predict(model, postprocessors, loader, device)


def as_result(dets: np.ndarray) -> Dict[str, torch.Tensor]:
    """(K, 6) [x, y, w, h, score, label] -> {'boxes' (K, 4) xyxy, 'scores' (K,), 'labels' (K,) int64}."""
    t = torch.from_numpy(dets).reshape(-1, 6)
    return {"boxes": box_convert(t[:, :4], "xywh", "xyxy"), "scores": t[:, 4], "labels": t[:, 5].long()}


def ground_truth(gt_file: str, files: List[str]) -> List[GroundTruth]:
    """Per input file, its non-crowd ground-truth boxes (G, 4) xyxy in the file's pixels and labels (G,), from
    the COCO annotation file `gt_file` (images matched by file name; every file must be listed)."""
    data = read_annotation(gt_file)
    ids = {os.path.basename(str(im.get("file_name", ""))): im.get("id") for im in data.get("images") or []}
    missing = [os.path.basename(p) for p in files if os.path.basename(p) not in ids]
    if missing:
        raise InputError(f"--gt {gt_file} does not list {missing[0]}" + (f" (+{len(missing) - 1} more)" if
                                                                           len(missing) > 1 else "")
                         + "; pass only images it lists (their file names are matched)")
    by_image: Dict[Any, list] = {}
    for ann in data.get("annotations") or []:
        if not ann.get("iscrowd", 0):
            by_image.setdefault(ann.get("image_id"), []).append(ann)
    out = []
    for path in files:
        anns = by_image.get(ids[os.path.basename(path)], [])
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        out.append((box_convert(boxes, "xywh", "xyxy"), torch.tensor([int(a["category_id"]) for a in anns])))
    return out


def run(opts) -> List[Dict]:
    from datasets.coco import transforms_from_args
    from engine import write_coco_results

    if not 0.0 <= opts.threshold <= 1.0:
        raise InputError(f"--threshold {opts.threshold}: must be in [0, 1]")
    if not os.path.isfile(opts.checkpoint):
        raise missing_checkpoint_error(opts.checkpoint, "--checkpoint")
    files = list_images(opts.input)
    print_threads(opts)
    annotation = opts.names_from or (opts.gt if not opts.names else None)  # names and image ids
    names = load_names(annotation, opts.names)
    truth = ground_truth(opts.gt, files) if opts.gt else [None] * len(files)
    image_ids = coco_image_ids(annotation, files)
    args, model, postprocessors, origin = load_tool_model(
        opts.config_file, opts.checkpoint, opts.options, opts.device, config_flags(opts),
        error_file=os.path.join(opts.output, "load_error.txt"))
    print(origin)
    names = names or args.class_names  # else the checkpoint's (its training data's categories)
    print(f"class names: {names_origin(opts, annotation, names)}")
    transform = transforms_from_args("val", args)
    os.makedirs(opts.output, exist_ok=True)
    detections = predict_files(model, postprocessors, transform, files, torch.device(args.device))
    # engine.predict keys by the loader's image_id (the file index); the JSON gets the COCO id if known
    kept = {(image_ids[i] if image_ids else i): d[d[:, 4] >= opts.threshold] for i, d in detections.items()}
    index = {(image_ids[i] if image_ids else i): i for i in range(len(files))}
    out_json = os.path.join(opts.output, "detections.json")
    write_coco_results(kept, out_json, fields=lambda image_id, label: {
        "file_name": os.path.basename(files[index[image_id]]), "category_name": class_name(names, label)})
    drawn_count = 0
    for i, path in enumerate(files):
        picture, drawn = draw_prediction(read_image(path), as_result(detections[i]), names, opts.threshold,
                                         None if opts.no_nms else DISPLAY_NMS_IOU, truth[i])
        drawn_count += drawn
        stem = os.path.splitext(os.path.basename(path))[0]
        picture.save(os.path.join(opts.output, f"{stem}.png"))
    with open(out_json) as f:
        written = json.load(f)
    print(f"{len(files)} image(s), {len(written)} detection(s) >= {opts.threshold} in detections.json "
          f"(image_id = {'COCO id from ' + annotation if image_ids else 'input order'}), {drawn_count} drawn "
          f"({'raw output' if opts.no_nms else f'same-class NMS at IoU {DISPLAY_NMS_IOU}'})"
          + (f" over the dashed ground truth of {opts.gt}" if opts.gt else "")
          + f"; wrote {out_json} and {len(files)} PNG(s) in {opts.output}")
    return written


def get_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p, config_help="config the checkpoint was trained with (default: the one stored in the "
                                       "checkpoint; needed for official DINO checkpoints)")
    p.add_argument("--checkpoint", required=True, help="checkpoint .pth (this project's or official DINO)")
    p.add_argument("--input", required=True, help="an image file or a folder of images")
    p.add_argument("--output", required=True, help="output folder for detections.json and the PNGs")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"minimum score kept and drawn (default {DEFAULT_THRESHOLD})")
    p.add_argument("--no_nms", action="store_true",
                   help="draw the raw output: no same-class NMS in the pictures (detections.json never has it)")
    names = p.add_mutually_exclusive_group()
    names.add_argument("--names-from", default=None, metavar="ANNOTATION_JSON",
                       help="class names from a COCO annotation file's 'categories', and image_id from its "
                            "'images' (matched by file name)")
    names.add_argument("--names", default=None, metavar="FILE",
                       help="class names: JSON id->name (or list), or text with line N naming id N (default: "
                            "--gt's, else the names stored in the checkpoint)")
    p.add_argument("--gt", default=None, metavar="ANNOTATION_JSON",
                   help="draw the ground truth of this COCO annotation file (dashed, under the detections) on the "
                        "images it lists (matched by file name); also gives names and image ids")
    return p


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    opts = get_parser().parse_args(argv)
    return run_guarded("inference.py", lambda: run(opts), TOOL_ERRORS)


if __name__ == "__main__":
    main()
