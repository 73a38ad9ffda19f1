import random

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from datasets.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FinalizeTarget,
    RandomResize,
    RandomSelect,
    RandomSizeCrop,
    detr_resize_size,
    make_boxes,
    make_coco_transforms,
    scaled_aug_sizes,
)


def sample(w=100, h=50, boxes=((10., 5., 30., 25.), (90., 40., 100., 50.)), labels=(1, 2)):
    img = Image.new("RGB", (w, h), (200, 100, 50))
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    target = {"boxes": make_boxes(b, h, w), "labels": torch.tensor(labels, dtype=torch.int64),
              "area": (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]),
              "iscrowd": torch.zeros(len(b), dtype=torch.int64)}
    return img, target


@pytest.mark.parametrize("h,w,size,max_size,expected", [
    (480, 640, 800, 1333, (800, 1066)),   # landscape: long side truncated, not rounded
    (640, 480, 800, 1333, (1066, 800)),   # portrait
    (100, 1000, 800, 1333, (133, 1330)),  # long side capped: short = round(1333 * 100 / 1000)
    (800, 1000, 800, 1333, (800, 1000)),  # already the right size: unchanged
    (300, 400, 600, None, (600, 800)),    # no cap
])
def test_detr_resize_size(h, w, size, max_size, expected):
    assert detr_resize_size(h, w, size, max_size) == expected


def test_hflip_maps_boxes_exactly():
    img, t = sample()  # the pipeline's flip is v2's, fed DINO's (image, target) pair
    out_img, out = v2.RandomHorizontalFlip(p=1.0)(img, t)
    assert torch.equal(out["boxes"].as_subclass(torch.Tensor), torch.tensor([[70., 5., 90., 25.], [0., 40., 10., 50.]]))
    assert torch.equal(out["labels"], t["labels"])
    assert out_img.getpixel((99, 0)) == img.getpixel((0, 0))


def test_random_resize_scales_boxes_and_area():
    img, t = sample()
    out_img, out = RandomResize([100], max_size=1000)(img, t)
    assert out_img.size == (200, 100)
    assert torch.allclose(out["boxes"].as_subclass(torch.Tensor), t["boxes"].as_subclass(torch.Tensor) * 2)
    assert torch.allclose(out["area"], t["area"] * 4)


def test_random_resize_exact_pair_is_w_h():
    img, t = sample()
    out_img, _ = RandomResize([(30, 20)])(img, t)
    assert out_img.size == (30, 20)


def test_random_size_crop_removes_outside_boxes_and_clips():
    img, t = sample(boxes=((0., 0., 20., 20.), (80., 30., 100., 50.), (35., 0., 45., 50.)), labels=(1, 2, 3))
    crop = RandomSizeCrop(40, 40)
    random.seed(0)
    for _ in range(20):
        out_img, out = crop(img, t)
        assert out_img.size == (40, 40)
        b = out["boxes"].as_subclass(torch.Tensor)
        assert len(b) == len(out["labels"]) == len(out["area"]) == len(out["iscrowd"])
        assert (b >= 0).all() and (b[:, 0::2] <= 40).all() and (b[:, 1::2] <= 40).all()
        assert (b[:, 2] - b[:, 0] >= 1).all() and (b[:, 3] - b[:, 1] >= 1).all()
        assert torch.allclose(out["area"], (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))


def test_random_size_crop_drops_exactly_the_boxes_outside_the_window():
    # red channel = x coordinate, so the crop's left edge can be read from the output
    img = Image.frombytes("RGB", (200, 40), bytes(v for y in range(40) for x in range(200) for v in (x, 0, 0)))
    boxes = torch.tensor([[0., 0., 10., 10.], [150., 0., 160., 40.], [60., 5., 120., 30.]])
    t = {"boxes": make_boxes(boxes, 40, 200), "labels": torch.tensor([1, 2, 3]),
         "area": torch.ones(3), "iscrowd": torch.zeros(3, dtype=torch.int64)}
    random.seed(1)
    for _ in range(30):
        out_img, out = RandomSizeCrop(40, 40)(img, t)
        left = out_img.getpixel((0, 0))[0]
        overlap = (boxes[:, 2].clamp(max=left + 40) - boxes[:, 0].clamp(min=left)) >= 1
        assert out["labels"].tolist() == [label for label, k in zip([1, 2, 3], overlap) if k]
        expected = boxes[overlap].clone()
        expected[:, 0::2] = (expected[:, 0::2] - left).clamp(0, 40)
        assert torch.allclose(out["boxes"].as_subclass(torch.Tensor), expected)


def test_random_size_crop_small_image_uses_whole_side():
    img, t = sample(w=30, h=20)
    out_img, _ = RandomSizeCrop(64, 100)(img, t)
    assert out_img.size == (30, 20)


def test_random_size_crop_rejects_inverted_range():
    with pytest.raises(ValueError, match="data_aug_scales2_crop"):
        RandomSizeCrop(100, 50)


def test_finalize_normalises_image_and_boxes():
    img, t = sample()
    image, out = FinalizeTarget()(img, t)
    assert image.shape == (3, 50, 100) and image.dtype == torch.float32 and type(image) is torch.Tensor
    expected_r = (200 / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert torch.allclose(image[0], torch.full((50, 100), expected_r), atol=1e-5)
    assert torch.allclose(out["boxes"][0], torch.tensor([0.2, 0.3, 0.2, 0.4]))
    assert type(out["boxes"]) is torch.Tensor
    assert out["size"].tolist() == [50, 100]


def test_val_pipeline_resizes_short_side_to_max_scale():
    img, t = sample()
    tf = make_coco_transforms("val", [32, 48], 200, [40], [20, 30])
    image, out = tf(img, t)
    assert image.shape[-2:] == (48, 96)
    assert torch.allclose(out["boxes"][0], torch.tensor([0.2, 0.3, 0.2, 0.4]))


def test_train_pipeline_sizes_and_box_range():
    random.seed(0)
    torch.manual_seed(0)
    tf = make_coco_transforms("train", [32, 48], 80, [40, 50], [20, 40])
    for _ in range(30):
        img, t = sample()
        image, out = tf(img, t)
        h, w = image.shape[-2:]
        assert min(h, w) <= 48 and max(h, w) <= 80
        assert out["size"].tolist() == [h, w]
        assert ((out["boxes"] >= 0) & (out["boxes"] <= 1)).all()
        assert len(out["boxes"]) == len(out["labels"])


def test_random_select_draws_from_pythons_random():
    # DINO's draw (random.random() < p), not v2.RandomChoice's torch.multinomial: the
    # augmentation stream of existing runs stays as it was
    pick = RandomSelect(lambda i, t: (i, "first"), lambda i, t: (i, "second"), p=0.3)
    random.seed(5)
    expected = ["first" if random.random() < 0.3 else "second" for _ in range(50)]
    torch.manual_seed(0)
    first_torch_draw = torch.rand(1)
    random.seed(5)
    torch.manual_seed(0)
    assert [pick(None, {})[1] for _ in range(50)] == expected
    assert torch.equal(torch.rand(1), first_torch_draw)  # torch's generator untouched


def test_fix_size_pipeline_is_exact():
    tf = make_coco_transforms("train", [32, 48], 80, [40], [20, 30], fix_size=True)
    image, _ = tf(*sample())
    assert image.shape[-2:] == (48, 80)


def test_unknown_image_set():
    with pytest.raises(ValueError, match="'test'"):
        make_coco_transforms("test", [32], 80, [40], [20, 30])


def test_scale_overlap_multiplies_all_sizes():
    assert scaled_aug_sizes([100, 200], 300, [50], [40, 60], None) == ([100, 200], 300, [50], [40, 60])
    assert scaled_aug_sizes([100, 200], 300, [50], [40, 60], 1.5) == ([150, 300], 450, [75], [60, 90])
