"""Drawing detections and ground truth: one colour per class, labels on filled backgrounds, display-only NMS.

Used by tools/inference.py, tools/browse_dataset.py and main.py's prediction picture
(`save_prediction_grid`), so every picture of this project looks the same:

* each class id has its own colour from a fixed palette (class id modulo its length), so a class
  keeps its colour across images and runs;
* a label is the class name and score on a filled box of the class colour, in black or white,
  whichever contrasts more; font size and line width scale with the image;
* images whose longer side is below MIN_SIDE are upscaled before drawing (boxes scaled alike), so
  the labels of a 256 px image stay readable;
* `select_for_display` keeps the detections above a threshold and removes same-class duplicates
  with torchvision's batched_nms. This is for pictures only: detections.json and the COCO numbers
  are the model's raw output;
* ground-truth boxes are drawn dashed in their class colour, under the detections, labelled with the
  class name only; a picture where no detection passes the threshold says so in its top-left corner
  ("no box above 0.2 (highest score 0.13)").
"""
from typing import Dict, Optional, Sequence, Tuple

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.ops import batched_nms

from util.disk import atomic_file

# 20 well-separated colours (the order of matplotlib's tab20: dark shades first, then the light ones)
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
           "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5")
MIN_SIDE = 640  # images with a smaller longer side are upscaled to this for drawing
DISPLAY_NMS_IOU = 0.5  # same-class boxes overlapping more than this are one object in a picture


def class_color(label: int) -> str:
    """The palette colour of a class id ('#rrggbb')."""
    return PALETTE[int(label) % len(PALETTE)]


def _text_color(hex_color: str) -> str:
    """Black or white, whichever reads better on `hex_color` (relative luminance, ITU-R BT.709)."""
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 140 else "white"


def select_for_display(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, threshold: float,
                       nms_iou: Optional[float] = DISPLAY_NMS_IOU) -> torch.Tensor:
    """Indices (K',) of the detections to draw, by decreasing score: score >= threshold, then (unless
    nms_iou is None) class-aware NMS. boxes (K, 4) xyxy, scores (K,), labels (K,)."""
    keep = (scores >= threshold).nonzero().flatten()
    if nms_iou is not None and len(keep):
        keep = keep[batched_nms(boxes[keep].float(), scores[keep].float(), labels[keep], nms_iou)]
    return keep[scores[keep].argsort(descending=True)]


GroundTruth = Tuple[torch.Tensor, torch.Tensor]  # boxes (G, 4) xyxy in the image's pixels, labels (G,)


def draw_detections(image: Image.Image, boxes: torch.Tensor, labels: torch.Tensor, scores: Optional[torch.Tensor],
                    names: Optional[Dict[int, str]] = None, ground_truth: Optional[GroundTruth] = None,
                    note: Optional[str] = None) -> Image.Image:
    """A copy of `image` (upscaled if small) with every given detection drawn.

    boxes (K, 4) xyxy in `image`'s pixels, labels (K,) class ids, scores (K,) (None: boxes without scores,
    labelled with the name only); names maps class id -> name ('class N' otherwise). Filter first
    (select_for_display); this draws all it gets, the highest score last so that its label is on top.
    ground_truth is drawn dashed under them; note is written in the top-left corner.
    """
    names = names or {}
    scale = max(1.0, MIN_SIDE / max(image.size))
    out = image.convert("RGB")
    if scale > 1:
        out = out.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    side = max(out.size)
    width = max(2, round(side / 200))
    font = ImageFont.load_default(size=max(12, round(side / 32)))
    canvas = ImageDraw.Draw(out)
    placed = []
    if note:
        _draw_label(canvas, font, note, _label_place(canvas, font, note, [0, 0, 0, 0], out.size, width, placed),
                    "#ffffff")
    if ground_truth is not None and len(ground_truth[0]):
        gt_boxes = [[float(v) * scale for v in b] for b in ground_truth[0]]
        texts = [names.get(int(c)) or f"class {int(c)}" for c in ground_truth[1]]
        for b, c in zip(gt_boxes, ground_truth[1]):
            _dashed_rectangle(canvas, b, class_color(int(c)), width)
        for b, c, text in zip(gt_boxes, ground_truth[1], texts):
            _draw_label(canvas, font, text, _label_place(canvas, font, text, b, out.size, width, placed),
                        class_color(int(c)))
    order = (torch.as_tensor(scores).argsort(descending=True).tolist() if scores is not None
             else list(range(len(boxes))))
    xyxy = {i: [float(v) * scale for v in boxes[i]] for i in order}
    labels_at = {}
    for i in order:  # the best detection gets the first choice of label place
        label = int(labels[i])
        text = (names.get(label) or f"class {label}") + (f" {float(scores[i]):.2f}" if scores is not None else "")
        labels_at[i] = (text, _label_place(canvas, font, text, xyxy[i], out.size, width, placed))
    for i in reversed(order):  # boxes lowest score first: the best box ends up on top
        x0, y0, x1, y1 = xyxy[i]
        # a dark edge on both sides keeps light or same-coloured boxes visible on any background
        canvas.rectangle((x0 - 1, y0 - 1, x1 + 1, y1 + 1), outline="black", width=width + 2)
        canvas.rectangle((x0, y0, x1, y1), outline=class_color(int(labels[i])), width=width)
    for i in reversed(order):
        _draw_label(canvas, font, labels_at[i][0], labels_at[i][1], class_color(int(labels[i])))
    return out


def _draw_label(canvas, font, text: str, place, color: str) -> None:
    tx, ty, tw, th, dx, dy = place
    canvas.rectangle((tx, ty, tx + tw, ty + th), fill=color, outline="black")
    canvas.text((tx + dx, ty + dy), text, fill=_text_color(color), font=font)


def _dashed_rectangle(canvas, box, color: str, width: int) -> None:
    """A ground-truth box: dashes of the class colour over a thin dark outline (visible on any background)."""
    x0, y0, x1, y1 = box
    canvas.rectangle((x0, y0, x1, y1), outline="black", width=1)
    dash = 4 * width
    for (ax, ay), (bx, by) in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))):
        length = max(abs(bx - ax), abs(by - ay))
        for start in range(0, int(length), 2 * dash):
            t0, t1 = start / max(length, 1), min(start + dash, length) / max(length, 1)
            canvas.line((ax + (bx - ax) * t0, ay + (by - ay) * t0, ax + (bx - ax) * t1, ay + (by - ay) * t1),
                        fill=color, width=width)


def draw_prediction(image: Image.Image, result: Dict[str, torch.Tensor], names: Optional[Dict[int, str]],
                    threshold: float, nms_iou: Optional[float] = DISPLAY_NMS_IOU,
                    ground_truth: Optional[GroundTruth] = None) -> Tuple[Image.Image, int]:
    """(the picture of one image's detections, how many were drawn): result {'boxes' (K, 4) xyxy in `image`'s
    pixels, 'scores' (K,), 'labels' (K,)} filtered by select_for_display; with none left, the picture says so
    and gives the highest score."""
    keep = select_for_display(result["boxes"], result["scores"], result["labels"], threshold, nms_iou)
    note = None
    if not len(keep):
        top = f"highest score {float(result['scores'].max()):.2f}" if len(result["scores"]) else "no detections"
        note = f"no box above {threshold:g} ({top})"
    return draw_detections(image, result["boxes"][keep], result["labels"][keep], result["scores"][keep], names,
                           ground_truth, note), len(keep)


def _label_place(canvas, font, text: str, box, size, width: int, placed: list):
    """(x, y, w, h, text dx, text dy) of a label for `box` (xyxy): above its top-left corner, else
    just inside it, else below the box, moved down past labels already placed (appended to
    `placed`) so that labels of overlapping boxes do not cover each other."""
    left, top, right, bottom = canvas.textbbox((0, 0), text, font=font)
    pad = max(1, width // 2)
    tw, th = right - left + 2 * pad, bottom - top + 2 * pad
    x0, y0, _, y1 = box
    tx = min(max(0.0, x0), max(0.0, size[0] - tw))

    def free(y):
        return 0 <= y <= size[1] - th and not any(
            tx < px + pw and px < tx + tw and y < py + ph and py < y + th for px, py, pw, ph in placed)

    candidates = [y0 - th, y0, y1]
    y = next((c for c in candidates if free(c)), None)
    if y is None:  # every usual place is taken: the first free row going down from the box top
        y = next((y0 + k * th for k in range(1, 50) if free(y0 + k * th)), max(0.0, min(y0, size[1] - th)))
    placed.append((tx, y, tw, th))
    return tx, y, tw, th, pad - left, pad - top


def tensor_to_pil(image: torch.Tensor, mean: Sequence[float] = (0.485, 0.456, 0.406),
                  std: Sequence[float] = (0.229, 0.224, 0.225)) -> Image.Image:
    """A normalised (3, H, W) float image (the val transform's output, ImageNet statistics) as PIL RGB."""
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    pixels = ((image.detach().float().cpu() * s + m).clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).numpy())


@torch.no_grad()
def save_prediction_grid(model: torch.nn.Module, postprocessors: Dict, dataset, indices: Sequence[int], path: str,
                         names: Optional[Dict[int, str]] = None, threshold: float = 0.2,
                         nms_iou: Optional[float] = DISPLAY_NMS_IOU, columns: int = 2) -> Image.Image:
    """Draw the model's detections on dataset[i] for i in indices and save them as one PNG grid.

    dataset yields (normalised image (3, H, W), target) as the val split does; the picture is of the
    transformed image (the size the model saw), boxes post-processed to that size. Detections are
    filtered by select_for_display(threshold, nms_iou). Returns the grid image (also written to path).
    """
    model.eval()
    device = next(model.parameters()).device
    tiles = []
    for i in indices:
        image, _ = dataset[i]
        out = model(image[None].to(device))
        size = torch.tensor([list(image.shape[-2:])], device=device)
        res = {k: v.cpu() for k, v in postprocessors["bbox"](out, size)[0].items()}
        tiles.append(draw_prediction(tensor_to_pil(image), res, names, threshold, nms_iou)[0])
    if not tiles:
        raise ValueError("save_prediction_grid: no indices given; pass at least one dataset index")
    grid = tile(tiles, columns)
    with atomic_file(path) as f:  # a full disk: one line naming the file (util/disk.py)
        grid.save(f, format="PNG")
    return grid


def tile(images: Sequence[Image.Image], columns: int = 2, gap: int = 8) -> Image.Image:
    """Images side by side in rows of `columns`, each cell as large as the largest image, white gaps."""
    cw, ch = max(im.width for im in images), max(im.height for im in images)
    rows = (len(images) + columns - 1) // columns
    cols = min(columns, len(images))
    grid = Image.new("RGB", (cols * cw + (cols - 1) * gap, rows * ch + (rows - 1) * gap), "white")
    for k, im in enumerate(images):
        grid.paste(im, ((k % columns) * (cw + gap), (k // columns) * (ch + gap)))
    return grid
