"""Look at a dataset's ground truth: the boxes of N images of a COCO-format folder or of the synthetic set,
drawn as every picture of this project is (util/visualize.py: a colour per class, dashed ground truth).

    python tools/browse_dataset.py --coco_path MY_DATA --output gt/ [--split val] [--num 8] [--start 0]
    python tools/browse_dataset.py --output gt/ --transforms [-c CONFIG] [--seed 0]   # the synthetic set

Data: --coco_path DIR (its annotations/instances_<split>2017.json and <split>2017/), else the dataset of the
config (-c, default main.py's: the synthetic set, generated on first use). Images are taken in the order of
their ids, from --start. Without --transforms each picture is the stored image with its JSON boxes (crowd
boxes left out, as in training); with --transforms it is what training sees: the config's training
transforms (random flip, resizes and crop, drawn anew per image; --seed repeats them) applied to image and
boxes. Class names come from the annotation file's categories. Writes OUTPUT/<file stem>.png per image and
OUTPUT/grid.png with all of them, and says so.
"""
import argparse
import os
import sys
from typing import List, Optional

import torch
from torchvision.ops import box_convert

if __package__ in (None, ""):  # run as `python tools/x.py`: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from engine.cli import DEFAULT_CONFIG  # noqa: E402
from tools.common import TOOL_ERRORS, ToolError, add_model_arguments, print_threads, tool_args  # noqa: E402
from util.cli import ArgumentParser, run_guarded  # noqa: E402
from util.visualize import draw_detections, tensor_to_pil, tile  # noqa: E402


def picture(dataset, index: int, names, transformed: bool):
    """(the drawn ground truth of dataset[index], its number of boxes)."""
    image, target = dataset[index]
    if transformed:  # normalised (3, H, W) and normalised cxcywh boxes in the transformed image
        h, w = image.shape[-2:]
        boxes = box_convert(target["boxes"], "cxcywh", "xyxy") * torch.tensor([w, h, w, h])
        image = tensor_to_pil(image)
    else:  # the stored image and its boxes, xyxy in its pixels
        boxes = target["boxes"]
    empty = torch.zeros(0, 4)
    drawn = draw_detections(image, empty, torch.zeros(0, dtype=torch.long), None, names,
                            ground_truth=(boxes, target["labels"]),
                            note=None if len(boxes) else "no ground-truth box")
    return drawn, len(boxes)


def browse(opts) -> List[str]:
    """Draw the pictures; returns the written paths (the grid last)."""
    from datasets import CocoDetection, dataset_root
    from datasets.coco import split_files, transforms_from_args
    from datasets.loaders import seed_all

    if opts.num < 1 or opts.start < 0:
        raise ToolError(f"--num {opts.num} / --start {opts.start}: need --num >= 1 and --start >= 0")
    options = dict(opts.options or {}, **({"dataset_file": "coco"} if opts.coco_path else {}))
    args = tool_args(opts.config_file, options, "cpu")
    args.coco_path = opts.coco_path
    folder, ann_file = split_files(dataset_root(args), opts.split)
    transforms = transforms_from_args("train", args) if opts.transforms else None
    # no class-count check: browsing needs no model (a folder with ids beyond the config's num_classes is fine)
    dataset = CocoDetection(folder, ann_file, transforms=transforms)
    names = {int(c["id"]): str(c.get("name") or f"class {c['id']}") for c in dataset.coco.dataset["categories"]}
    indices = range(opts.start, min(len(dataset), opts.start + opts.num))
    if not indices:
        raise ToolError(f"--start {opts.start}: {folder} has {len(dataset)} images")
    seed_all(opts.seed)
    os.makedirs(opts.output, exist_ok=True)
    written, pictures, boxes = [], [], 0
    for i in indices:
        drawn, count = picture(dataset, i, names, opts.transforms)
        stem = os.path.splitext(os.path.basename(dataset.coco.imgs[dataset.ids[i]]["file_name"]))[0]
        written.append(os.path.join(opts.output, f"{stem}{'_train' if opts.transforms else ''}.png"))
        drawn.save(written[-1])
        pictures.append(drawn)
        boxes += count
    written.append(os.path.join(opts.output, "grid.png"))
    tile(pictures, columns=4).save(written[-1])
    print(f"drew the ground truth of {len(indices)} image(s) of {folder} ({boxes} boxes, "
          f"{'after the training transforms of ' + args.config_file if opts.transforms else 'as stored'}); wrote "
          f"{len(indices)} PNG(s) and {written[-1]}")
    return written


def get_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p, DEFAULT_CONFIG, f"config whose dataset and transforms are used (default {DEFAULT_CONFIG})",
                        with_device=False)
    p.add_argument("--coco_path", default=None, help="a COCO-format folder (default: the config's dataset)")
    p.add_argument("--split", default="val", choices=["train", "val"], help="which split (default val)")
    p.add_argument("--num", type=int, default=8, help="images drawn (default 8)")
    p.add_argument("--start", type=int, default=0, help="index of the first image, in id order (default 0)")
    p.add_argument("--transforms", action="store_true", help="draw what training sees (the training transforms)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random transforms (default 0)")
    p.add_argument("--output", required=True, help="folder for the PNGs")
    return p


def main(argv: Optional[List[str]] = None) -> List[str]:
    opts = get_parser().parse_args(argv)
    run_guarded("browse_dataset.py", lambda: print_threads(opts), TOOL_ERRORS)
    return run_guarded("browse_dataset.py", lambda: browse(opts), TOOL_ERRORS)


if __name__ == "__main__":
    main()
