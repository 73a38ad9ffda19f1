"""tools/erf.py: the area ratio on maps with a known answer, the gradients against finite differences, an
encoder whose receptive field is known by construction (zero sampling offsets), per-layer maps that differ,
and the command end to end (PNG, JSON, two checkpoints, one-line errors)."""
import json

import pytest
import torch
from PIL import Image

from models import build_model
from tools import erf

from name_keyed_weights import init_by_name
from tiny_configs import tiny_args


def square_map(n: int, side: int) -> torch.Tensor:
    """An n x n map of zeros with a centred square of ones of the given odd side."""
    m = torch.zeros(n, n)
    lo = n // 2 - side // 2
    m[lo:lo + side, lo:lo + side] = 1.0
    return m


@pytest.mark.parametrize("n, side", [(64, 9), (63, 21), (100, 1)])
def test_area_ratio_of_a_centred_square(n, side):
    """A uniform square of side s: the first centred square (side 2i + 1 >= 3) holding more than t of the
    mass has side min(s, smallest odd k >= 3 with k^2 > t s^2)."""
    m = square_map(n, side)
    for t in erf.THRESHOLDS:
        k = 3
        while k < side and k * k <= t * side * side:
            k += 2
        assert erf.area_ratio(m, t) == pytest.approx((k / n) ** 2), t


def test_area_ratio_of_a_gaussian_and_when_it_is_not_reached():
    """A centred Gaussian of std sigma holds a fraction erf(a / (sigma sqrt 2))^2 of its mass in the square
    of half side a: the ratio is within one pixel step of the side that solves it; a map spread to the
    border never reaches t = 0.99 inside the squares the recipe tries."""
    n, sigma = 201, 12.0
    y, x = torch.meshgrid(torch.arange(n) - n // 2, torch.arange(n) - n // 2, indexing="ij")
    gauss = torch.exp(-(x.double() ** 2 + y.double() ** 2) / (2 * sigma ** 2))
    for t in (0.2, 0.5, 0.99):
        half = sigma * 2 ** 0.5 * torch.special.erfinv(torch.tensor(t ** 0.5, dtype=torch.float64))
        side = (erf.area_ratio(gauss, t) ** 0.5) * n
        assert 2 * half - 1 <= side <= 2 * half + 3, (t, side, 2 * half)
    assert erf.area_ratio(torch.ones(50, 50), 0.99) is None
    assert erf.area_ratio(torch.ones(50, 50), 0.5) == pytest.approx((37 / 50) ** 2)  # 37^2 > 0.5 * 2500 > 35^2


def test_map_of_a_gradient_is_log_scaled_to_one():
    """Positive part summed over the colour channels, then log10(x + 1) / max."""
    grad = torch.tensor([[[1.0, -2.0]], [[-1.0, 3.0]], [[0.5, 0.0]]])  # (3, 1, 2)
    assert torch.equal(erf.positive_map(grad), torch.tensor([[1.5, 3.0]]))
    m = torch.tensor([[0.0, 9.0], [99.0, 0.0]])
    assert torch.allclose(erf.normalised(m), torch.tensor([[0.0, 0.5], [1.0, 0.0]], dtype=torch.float64))


# the tiny models are 32 wide: GroupNorm(32) of the stride-64 level needs more than one token, so 128 px
SIZE = 128


def tiny_model(**overrides):
    return init_by_name(build_model(tiny_args(**overrides))[0]).eval()


def test_gradients_match_finite_differences():
    """In float64: each layer's score, moved by +-eps at a few pixels, against its image gradient; and the
    features gradient against moving one input token's channel."""
    model = tiny_model().double()
    image = torch.randn(3, SIZE, SIZE, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    image_grads, feature_grads, shapes = erf.layer_gradients(model, image, features=True)
    token = erf.token_index(shapes, 0, None)

    def scores(img, bump=None):
        if bump is None:
            return torch.stack(erf.layer_scores(erf.run_encoder(model, img[None]), token))
        handle = model.transformer.encoder.register_forward_pre_hook(
            lambda _m, args: (args[0] + bump,) + args[1:])
        try:
            return scores(img)
        finally:
            handle.remove()

    eps = 1e-6
    with torch.no_grad():
        for c, y, x in [(0, 64, 64), (1, 60, 70), (2, 5, 120)]:
            step = torch.zeros_like(image)
            step[c, y, x] = eps
            numeric = (scores(image + step) - scores(image - step)) / (2 * eps)
            analytic = torch.stack([g[c, y, x] for g in image_grads])
            assert torch.allclose(numeric, analytic, rtol=1e-5, atol=1e-8), (c, y, x)
        for s, ch in [(token, 0), (300, 3)]:
            bump = torch.zeros(1, *feature_grads[0].shape, dtype=torch.float64)
            bump[0, s, ch] = eps
            numeric = (scores(image, bump) - scores(image, -bump)) / (2 * eps)
            assert torch.allclose(numeric, torch.stack([g[s, ch] for g in feature_grads]), rtol=1e-5, atol=1e-8)
    assert any(g.abs().sum() > 0 for g in image_grads)


def zero_offset_model():
    """The tiny model whose encoder samples only at each token's reference point: zero sampling offsets
    (weight and bias), so a token's deformable attention reads its own position on every level."""
    model = tiny_model()
    with torch.no_grad():
        for layer in model.transformer.encoder.layers:
            layer.self_attn.sampling_offsets.weight.zero_()
            layer.self_attn.sampling_offsets.bias.zero_()
    return model


def support(m: torch.Tensor):
    return {tuple(i) for i in m.nonzero().tolist()}


def test_zero_offsets_give_the_known_receptive_field():
    """128 x 128 input: levels 16x16, 8x8, 4x4, 2x2. Layer 1's centre token (8, 8) of level 0 reads exactly
    itself on level 0 (its reference point is its own pixel centre) and, on level 1, the 2 x 2 tokens
    around (8.5 / 16) * 8 - 0.5 = 3.75 (rows and columns 3, 4). Layer 2 reads what layer 1's coarser tokens
    read, so its level-0 field grows beyond the one token and its image ERF is wider."""
    model = zero_offset_model()
    image = torch.randn(3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    image_grads, feature_grads, shapes = erf.layer_gradients(model, image, features=True)
    assert shapes == [(16, 16), (8, 8), (4, 4), (2, 2)]
    first, second = (erf.level_maps(g, shapes) for g in feature_grads)
    assert support(first[0]) == {(8, 8)}
    assert support(first[1]) == {(3, 3), (3, 4), (4, 3), (4, 4)}
    assert support(second[0]) > support(first[0]) and len(support(second[0])) > 1
    widths = [erf.area_ratio(erf.normalised(erf.positive_map(g)), 0.5) for g in image_grads]
    assert widths[1] > widths[0]


def test_per_layer_maps_differ_and_follow_the_scored_token():
    model = tiny_model()
    images = [torch.randn(3, SIZE, SIZE, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    centre = erf.measure(model, images)
    maps = [m.mean for m in centre.image]
    assert centre.image[0].count == 2 and (maps[0] - maps[1]).abs().max() > 1e-3 * maps[0].max()
    corner = erf.measure(model, images[:1], level=1, position=(0, 0))  # a corner token: its mass moves there
    corner_map = corner.image[0].mean
    assert corner_map[:64, :64].sum() > corner_map[64:, 64:].sum() and maps[0][64:, 64:].sum() > 0


def test_features_map_keeps_each_levels_mass():
    maps = [torch.rand(8, 8), torch.rand(4, 4), torch.rand(2, 2), torch.rand(1, 1)]
    total = erf.on_finest_grid(maps)
    assert total.shape == (8, 8) and torch.isclose(total.sum(), sum(m.sum() for m in maps))


def test_nan_maps_are_skipped():
    mean = erf.RunningMean()
    mean.add(torch.ones(2, 2))
    mean.add(torch.full((2, 2), float("nan")))
    mean.add(3 * torch.ones(2, 2))
    assert (mean.count, mean.skipped) == (2, 1) and torch.equal(mean.mean, torch.full((2, 2), 2.0, dtype=torch.float64))


@pytest.fixture(scope="module")
def erf_images(tmp_path_factory):
    d = tmp_path_factory.mktemp("erf_images")
    g = torch.Generator().manual_seed(2)
    for i, (w, h) in enumerate([(80, 60), (50, 70), (64, 64)]):
        Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()).save(d / f"img{i}.png")
    return str(d)


def test_command_writes_the_figure_and_the_area_ratios(tmp_path, stored_config_checkpoint, erf_images):
    out = tmp_path / "erf.png"
    report = erf.main(["--checkpoint", stored_config_checkpoint, "--checkpoint", stored_config_checkpoint,
                       "--labels", "A", "B", "--images", erf_images, "--num-images", "2", "--size", str(SIZE),
                       "--features", "--out", str(out)])
    assert out.is_file() and (tmp_path / "erf_features.png").is_file()
    written = json.loads((tmp_path / "erf.json").read_text())
    assert written == json.loads(json.dumps(report)) and [m["label"] for m in written["models"]] == ["A", "B"]
    layer = written["models"][0]["layers"][0]
    assert set(layer["image"]) == {"0.2", "0.3", "0.5", "0.99"} and layer["kind"] == "deformable"
    assert written["models"][0]["images_used"] == 2 and abs(sum(layer["features_level_share"]) - 1) < 1e-6
    assert written["models"][0]["layers"] == written["models"][1]["layers"]  # the same checkpoint twice


def test_bad_input_is_one_line(tmp_path, stored_config_checkpoint, erf_images):
    base = ["--checkpoint", stored_config_checkpoint, "--images", erf_images, "--size", str(SIZE), "--out",
            str(tmp_path / "e.png")]
    for extra, message in ((["--labels", "A", "B"], "2 labels for 1 checkpoints"),
                           (["--level", "7"], "--level 7: the encoder has 4 levels"),
                           (["--position", "99", "0"], "--position 99 0: level 0 has 16 x 16 tokens")):
        with pytest.raises(SystemExit, match=message):
            erf.main(base + extra)
    with pytest.raises(SystemExit, match="no image files"):
        erf.main(base[:2] + ["--images", str(tmp_path), "--out", str(tmp_path / "e.png")])
