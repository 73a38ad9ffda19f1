import contextlib
import io
import logging

import pytest
import torch
import torch.distributed as dist
from pycocotools.coco import COCO

from datasets.coco import load_coco_json
from datasets.coco_eval import BACKENDS, CocoEvaluator, compare_backends, fake_detections
from util.logger import FILE_ONLY, LOGGER_NAME


@pytest.fixture(scope="module")
def gt(synthetic_root):
    coco = COCO()
    coco.dataset = load_coco_json(f"{synthetic_root}/annotations/instances_val2017.json")
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def gt_predictions(coco, jitter=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for img_id in coco.getImgIds():
        anns = coco.imgToAnns.get(img_id, [])
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        xyxy = xyxy + jitter * torch.randn(xyxy.shape, generator=g) * xywh[:, 2:].repeat(1, 2)
        out[img_id] = {"boxes": xyxy, "scores": torch.ones(len(anns)),
                       "labels": torch.tensor([a["category_id"] for a in anns])}
    return out


def evaluate(coco, preds, backend="pycocotools"):
    ev = CocoEvaluator(coco, ("bbox",), backend=backend)
    ev.update(preds)
    ev.synchronize_between_processes()
    ev.accumulate()
    return ev


@pytest.mark.parametrize("backend", BACKENDS)
def test_ground_truth_gives_ap_one_and_perturbed_less(gt, backend):
    perfect = evaluate(gt, gt_predictions(gt), backend).stats("bbox")
    assert len(perfect) == 12 and perfect[0] == pytest.approx(1.0) and perfect[1] == pytest.approx(1.0)
    noisy = evaluate(gt, gt_predictions(gt, jitter=0.15), backend).stats("bbox")
    assert 0 < noisy[0] < 0.9


def test_backends_give_the_same_12_stats(gt):
    preds = fake_detections(gt, num_dets=30, seed=1)
    a = evaluate(gt, preds, "pycocotools")
    b = evaluate(gt, preds, "faster_coco_eval")
    assert a.stats() == pytest.approx(b.stats(), abs=1e-12)
    assert list(a.coco_eval["bbox"].stats[:12]) == pytest.approx(list(b.coco_eval["bbox"].stats[:12]), abs=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_summarize_logs_ap_x100_and_keeps_the_0_1_table_for_info_txt(gt, backend, capsys):
    """Nothing of the backend's own prints reaches stdout; the log gets AP x 100 and recall lines, and the
    backend's 0-1 table marked for info.txt only."""
    ev = evaluate(gt, gt_predictions(gt), backend)
    capsys.readouterr()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger(LOGGER_NAME)
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        ev.summarize()
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert capsys.readouterr().out == ""
    messages = [r.getMessage() for r in records]
    assert messages[0].startswith("COCO bbox on ") and "(x 100): AP 100.0" in messages[0]
    assert messages[1].startswith("COCO bbox recall (x 100): AR1 ")
    assert messages[2].count("Average Precision") == 6 and getattr(records[2], FILE_ONLY, False)


def test_only_updated_images_are_evaluated(gt):
    preds = gt_predictions(gt)
    first = sorted(preds)[0]
    ev = evaluate(gt, {first: preds[first]})
    assert ev.coco_eval["bbox"].params.imgIds == [first]
    assert ev.stats()[0] in (pytest.approx(1.0), -1.0)


def test_no_detections_gives_zero(gt):
    empty = {i: {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)}
             for i in gt.getImgIds()}
    for backend in BACKENDS:
        assert evaluate(gt, empty, backend).stats()[0] == 0.0


def test_detections_stored_compactly(gt):
    ev = CocoEvaluator(gt)
    ev.update(gt_predictions(gt))
    arrays = list(ev.detections.values())
    assert all(a.dtype.name == "float32" and a.shape[1] == 6 for a in arrays)


def test_bad_inputs(gt):
    with pytest.raises(ValueError, match="'segm'"):
        CocoEvaluator(gt, ("segm",))
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        CocoEvaluator(gt, backend="fast")
    ev = CocoEvaluator(gt)
    with pytest.raises(ValueError, match="2 boxes, 1 scores"):
        ev.update({1: {"boxes": torch.zeros(2, 4), "scores": torch.zeros(1), "labels": torch.zeros(2)}})
    ev.update({999999: {"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.ones(1)}})
    with pytest.raises(ValueError, match="image id 999999 is not in the ground truth"):
        ev.accumulate()


def test_synchronize_merges_all_ranks(gt, monkeypatch):
    preds = gt_predictions(gt)
    ids = sorted(preds)
    ev = CocoEvaluator(gt)
    ev.update({ids[0]: preds[ids[0]]})
    other = CocoEvaluator(gt)
    other.update({ids[1]: preds[ids[1]]})

    def fake_gather(parts, obj):
        parts[0], parts[1] = obj, other.detections

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_gather_object", fake_gather)
    ev.synchronize_between_processes()
    assert ev.img_ids == ids[:2]


def test_compare_cli_prints_ratio(synthetic_root, capsys):
    times = compare_backends(synthetic_root, num_dets=20, repeats=1)
    out = capsys.readouterr().out
    assert set(times) == set(BACKENDS) and "speed-up faster_coco_eval vs pycocotools" in out
    assert "identical stats: True" in out
