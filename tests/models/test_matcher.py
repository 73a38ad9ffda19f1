import torch

from models.common.matcher import HungarianMatcher, focal_class_cost


def logits_for(labels, num_queries, num_classes, good=6.0):
    logits = torch.full((num_queries, num_classes), -good)
    for q, c in labels.items():
        logits[q, c] = good
    return logits


def test_matcher_recovers_a_permutation_of_the_targets():
    boxes = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.7, 0.6, 0.3, 0.2], [0.5, 0.5, 0.4, 0.4]])
    labels = torch.tensor([1, 2, 3])
    order = torch.tensor([2, 0, 1])  # query q predicts target order[q]
    pred_boxes = torch.cat([boxes[order], torch.tensor([[0.9, 0.9, 0.05, 0.05]])])[None]
    logits = logits_for({q: int(labels[t]) for q, t in enumerate(order)}, 4, 5)[None]
    (src, tgt), = HungarianMatcher()({"pred_logits": logits, "pred_boxes": pred_boxes},
                                     [{"labels": labels, "boxes": boxes}])
    assert sorted(zip(src.tolist(), tgt.tolist())) == [(0, 2), (1, 0), (2, 1)]


def test_matcher_handles_images_without_boxes():
    out = {"pred_logits": torch.zeros(2, 3, 4), "pred_boxes": torch.full((2, 3, 4), 0.5)}
    targets = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)},
               {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    indices = HungarianMatcher()(out, targets)
    assert [len(i) for i, _ in indices] == [0, 1]


def test_focal_class_cost_values():
    prob = torch.tensor([[0.9, 0.1]])
    cost = focal_class_cost(prob, alpha=0.25, gamma=2.0)
    expected_pos = 0.25 * 0.1 ** 2 * -torch.log(torch.tensor(0.9 + 1e-8))
    expected_neg = 0.75 * 0.9 ** 2 * -torch.log(torch.tensor(0.1 + 1e-8))
    assert torch.allclose(cost[0, 0], expected_pos - expected_neg)
    assert cost[0, 0] < cost[0, 1]  # confident class is cheaper to match


def test_box_cost_prefers_the_closer_box():
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2]])}]
    out = {"pred_logits": torch.zeros(1, 2, 2),
           "pred_boxes": torch.tensor([[[0.7, 0.7, 0.2, 0.2], [0.31, 0.3, 0.2, 0.2]]])}
    (src, _), = HungarianMatcher()(out, targets)
    assert src.tolist() == [1]


def test_matcher_assigns_despite_non_finite_predictions():
    """A diverged step's NaN boxes still get matched (the loss then reports the non-finite value)
    instead of scipy raising 'matrix contains invalid numeric entries'."""
    boxes = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.7, 0.6, 0.3, 0.2]])
    pred_boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [float("nan")] * 4, [0.7, 0.6, 0.3, 0.2]]])
    logits = logits_for({0: 1, 2: 2}, 3, 4)[None]
    logits[0, 1] = float("inf")
    (src, tgt), = HungarianMatcher()({"pred_logits": logits, "pred_boxes": pred_boxes},
                                     [{"labels": torch.tensor([1, 2]), "boxes": boxes}])
    assert sorted(zip(src.tolist(), tgt.tolist())) == [(0, 0), (2, 1)]
