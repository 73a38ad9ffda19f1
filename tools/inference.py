"""Run a trained DINO / AugDETR checkpoint on images; write COCO-format detections and drawn PNGs.

    python tools/inference.py -c config/DINO/DINO_4scale.py --checkpoint ckpt.pth --input IMAGE_OR_FOLDER \
        --output out/ [--threshold 0.3] [--names-from instances_val2017.json | --names names.txt]

Writes OUTPUT/detections.json (COCO result format, as main.py's results.json: image_id = the
file's index in sorted order, category_id, bbox xywh in original pixels, score; plus file_name
and category_name) and OUTPUT/<image stem>.png with the boxes, class names and scores above
the threshold drawn. Images get the dataset's val transform (resize to max(data_aug_scales),
longest side <= data_aug_max_size, ImageNet normalisation) and the model's own post-processor.
The loop and the JSON writer are main.py's (engine.predict, engine.write_coco_results), one
image per batch. Works with this project's checkpoints and official DINO ones (util.checkpoint
reads both).
"""
import argparse
import json
import os
import sys
from typing import Dict, List, Optional

import numpy as np
import torch
from torchvision.ops import box_convert
from torchvision.utils import draw_bounding_boxes

if __package__ in (None, ""):  # run as `python tools/x.py`: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools.common import build_eval_model, tool_args  # noqa: E402

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class InputError(ValueError):
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
            with open(names_from) as f:
                cats = json.load(f)["categories"]
            return {int(c["id"]): str(c["name"]) for c in cats}
        except (OSError, ValueError, KeyError, TypeError) as err:
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


def draw(image: torch.Tensor, result: Dict[str, torch.Tensor], names: Dict[int, str], threshold: float):
    keep = result["scores"] >= threshold
    labels = [f"{class_name(names, int(l))} {float(s):.2f}"
              for l, s in zip(result["labels"][keep], result["scores"][keep])]
    return draw_bounding_boxes(image, result["boxes"][keep], labels=labels, colors="red", width=2)


def run(opts) -> List[Dict]:
    from PIL import Image
    from torchvision.transforms.v2.functional import pil_to_tensor

    from datasets.coco import transforms_from_args
    from engine import write_coco_results

    if not 0.0 <= opts.threshold <= 1.0:
        raise InputError(f"--threshold {opts.threshold}: must be in [0, 1]")
    if not os.path.isfile(opts.checkpoint):
        raise InputError(f"--checkpoint {opts.checkpoint}: no such file")
    files = list_images(opts.input)
    names = load_names(opts.names_from, opts.names)
    args = tool_args(opts.config_file, opts.options, opts.use_hae, opts.use_emca, opts.device)
    model, postprocessors = build_eval_model(args, opts.checkpoint)
    transform = transforms_from_args("val", args)
    device = torch.device(args.device)
    os.makedirs(opts.output, exist_ok=True)
    detections = predict_files(model, postprocessors, transform, files, device)
    kept = {i: d[d[:, 4] >= opts.threshold] for i, d in detections.items()}
    out_json = os.path.join(opts.output, "detections.json")
    write_coco_results(kept, out_json, fields=lambda i, label: {
        "file_name": os.path.basename(files[i]), "category_name": class_name(names, label)})
    for i, path in enumerate(files):
        drawn = draw(pil_to_tensor(read_image(path)), as_result(detections[i]), names, opts.threshold)
        stem = os.path.splitext(os.path.basename(path))[0]
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(os.path.join(opts.output, f"{stem}.png"))
    with open(out_json) as f:
        written = json.load(f)
    print(f"{len(files)} image(s), {len(written)} detection(s) >= {opts.threshold} -> {opts.output}")
    return written


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config_file", required=True, help="config the checkpoint was trained with")
    p.add_argument("--checkpoint", required=True, help="checkpoint .pth (this project's or official DINO)")
    p.add_argument("--input", required=True, help="an image file or a folder of images")
    p.add_argument("--output", required=True, help="output folder for detections.json and the PNGs")
    p.add_argument("--threshold", type=float, default=0.3, help="minimum score kept and drawn (default 0.3)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device (default cpu)")
    p.add_argument("--options", nargs="+", default=None, metavar="KEY=VALUE", help="config overrides as in main.py")
    p.add_argument("--use_hae", action="store_true", help="the checkpoint is an AugDETR model with HAE")
    p.add_argument("--use_emca", action="store_true", help="the checkpoint is an AugDETR model with EMCA")
    names = p.add_mutually_exclusive_group()
    names.add_argument("--names-from", default=None, metavar="ANNOTATION_JSON",
                       help="take class names from a COCO annotation file's 'categories'")
    names.add_argument("--names", default=None, metavar="FILE",
                       help="class names: JSON id->name (or list), or text with line N naming id N")
    return p


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    opts = get_parser().parse_args(argv)
    if opts.device == "cuda" and not torch.cuda.is_available():
        sys.exit("inference.py: error: --device cuda but no CUDA device is visible; use --device cpu")
    from util.checkpoint import CheckpointError
    from util.slconfig import ConfigError
    try:
        return run(opts)
    except (InputError, CheckpointError, ConfigError) as err:
        sys.exit(f"inference.py: error: {err}")


if __name__ == "__main__":
    main()
