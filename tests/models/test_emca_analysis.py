import pytest
import torch

from models import build_model
from models.dino.augdetr.emca_weights import EmcaWeightRecorder

from tiny_configs import tiny_args, tiny_batch


def test_recorder_averages_the_matched_queries_gates(seeded):
    model, criterion, _ = build_model(tiny_args(use_emca=True))
    model.eval()
    rec = EmcaWeightRecorder(model, criterion.matcher)
    samples, targets = tiny_batch()
    with torch.no_grad():
        out = model(samples)
    rec.update(out, targets)
    gates = model.transformer.decoder.layers[-1].cross_attn.last_mix_weights
    matched = [gates[b, src] for b, (src, _) in enumerate(criterion.matcher(out, targets))]
    expected = torch.cat(matched).double()
    summary = rec.summary()
    assert summary["num_queries"] == 3 and summary["enc_layers"] == [1, 2]
    assert torch.allclose(torch.tensor(summary["mean"], dtype=torch.float64), expected.mean(0))
    assert torch.allclose(torch.tensor(summary["std"], dtype=torch.float64), expected.std(0, unbiased=False), atol=1e-7)


def test_recorder_needs_an_emca_model():
    model, criterion, _ = build_model(tiny_args())
    with pytest.raises(ValueError, match="--use_emca"):
        EmcaWeightRecorder(model, criterion.matcher)
