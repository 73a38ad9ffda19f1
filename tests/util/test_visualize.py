"""util/visualize.py: class colours, label backgrounds, upscaling, display NMS, the prediction grid."""
import torch
from PIL import Image

from util import visualize as draw


def _pixels(image: Image.Image):
    return torch.from_numpy(__import__("numpy").array(image)).permute(2, 0, 1)  # (3, H, W) uint8


def _rgb(hex_color: str):
    return [int(hex_color[i:i + 2], 16) for i in (1, 3, 5)]


def test_colour_per_class_is_fixed_and_distinct():
    assert draw.class_color(3) == draw.class_color(3 + len(draw.PALETTE)) == draw.PALETTE[3]
    assert len({draw.class_color(c) for c in range(len(draw.PALETTE))}) == len(draw.PALETTE)


def test_boxes_take_their_class_colour_and_labels_a_filled_background():
    image = Image.new("RGB", (800, 800), "white")  # a light image: the old red 2 px labels vanished here
    boxes = torch.tensor([[100.0, 200, 300, 400], [500, 200, 700, 400]])
    out = draw.draw_detections(image, boxes, torch.tensor([1, 2]), torch.tensor([0.9, 0.8]), {1: "a", 2: "b"})
    px = _pixels(out)
    assert out.size == (800, 800)  # large enough: not upscaled
    assert px[:, 300, 101].tolist() == _rgb(draw.class_color(1))  # left edge of box 1
    assert px[:, 300, 501].tolist() == _rgb(draw.class_color(2))
    # the label sits above the box on a filled background of the class colour: a band of that colour
    band = px[:, 180:200, 100:140].reshape(3, -1).T.tolist()
    assert sum(p == _rgb(draw.class_color(1)) for p in band) > len(band) // 2


def test_small_images_are_upscaled_with_their_boxes():
    image = Image.new("RGB", (64, 32), "black")
    out = draw.draw_detections(image, torch.tensor([[8.0, 8, 24, 24]]), torch.tensor([0]), torch.tensor([0.5]))
    scale = draw.MIN_SIDE / 64
    assert out.size == (draw.MIN_SIDE, round(32 * scale))
    px = _pixels(out)
    assert px[:, round(16 * scale), round(8 * scale) + 1].tolist() == _rgb(draw.class_color(0))


def test_labels_of_boxes_with_one_corner_do_not_cover_each_other():
    image = Image.new("RGB", (640, 640), "white")
    boxes = torch.tensor([[100.0, 100, 300, 300], [100, 100, 290, 310]])  # two classes on one object
    placed = []
    canvas = __import__("PIL.ImageDraw", fromlist=["Draw"]).Draw(image)
    font = __import__("PIL.ImageFont", fromlist=["x"]).load_default(size=20)
    first = draw._label_place(canvas, font, "ring 0.34", boxes[0].tolist(), image.size, 3, placed)
    second = draw._label_place(canvas, font, "ellipse 0.30", boxes[1].tolist(), image.size, 3, placed)
    (x1, y1, w1, h1), (x2, y2, w2, h2) = first[:4], second[:4]
    assert not (x1 < x2 + w2 and x2 < x1 + w1 and y1 < y2 + h2 and y2 < y1 + h1)


def test_display_selection_threshold_and_class_aware_nms():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 11], [0, 0, 10, 10], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.1])
    labels = torch.tensor([1, 1, 2, 1])
    # the same-class duplicate (index 1) goes, the other class on the same box (2) stays, 3 is below 0.5
    assert draw.select_for_display(boxes, scores, labels, 0.5).tolist() == [0, 2]
    assert draw.select_for_display(boxes, scores, labels, 0.5, nms_iou=None).tolist() == [0, 1, 2]
    assert draw.select_for_display(boxes, scores, labels, 0.0).tolist() == [0, 2, 3]


def test_prediction_grid_of_a_dataset(tmp_path):
    from models import build_model

    from name_keyed_weights import init_by_name
    from tiny_configs import tiny_args
    model, _, post = build_model(tiny_args())
    model = init_by_name(model).eval()
    g = torch.Generator().manual_seed(0)
    dataset = [(torch.randn(3, 64, 96, generator=g), {}) for _ in range(3)]
    path = tmp_path / "pred.png"
    grid = draw.save_prediction_grid(model, post, dataset, [0, 1, 2], str(path), threshold=0.0, columns=2)
    with Image.open(path) as im:
        assert im.size == grid.size
    cell_w, cell_h = draw.MIN_SIDE, round(64 * draw.MIN_SIDE / 96)  # each 96 px wide image upscaled
    assert grid.size == (2 * cell_w + 8, 2 * cell_h + 8)
    px = _pixels(grid)
    assert (px[:, cell_h + 8:, cell_w + 8:] == 255).all()  # the empty fourth cell stays white
    # nothing passes threshold 1.01: the cells are the plain (upscaled) images; at 0 boxes are drawn on them
    plain = _pixels(draw.save_prediction_grid(model, post, dataset, [0, 1, 2], str(path), threshold=1.01))
    assert not (plain == px).all()
    colours = {tuple(_rgb(c)) for c in draw.PALETTE}
    drawn = {tuple(v) for v in px[:, :cell_h, :cell_w].reshape(3, -1).T.tolist()}
    before = {tuple(v) for v in plain[:, :cell_h, :cell_w].reshape(3, -1).T.tolist()}
    assert len(drawn & colours) > len(before & colours)
