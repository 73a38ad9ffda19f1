"""DINO-4scale R50's state_dict must equal the official one key for key, shape for shape."""
import os

from models import build_model

from tiny_configs import config_args

# the official model's keys and shapes (IDEA-Research/DINO, DINO_4scale.py, num_classes=91)
REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "dino_4scale_r50_state_dict_keys.tsv")


def read_reference():
    keys = {}
    with open(REFERENCE) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            key, shape = line.rstrip("\n").split("\t")
            keys[key] = tuple(int(x) for x in shape.strip("()").split(",") if x.strip())
    return keys


def test_dino_4scale_state_dict_matches_official_keys_and_shapes():
    model, criterion, _ = build_model(config_args(num_classes=91, msda_backend="pytorch"))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    reference = read_reference()
    assert len(reference) == 626
    assert sorted(set(reference) - set(ours)) == []
    assert sorted(set(ours) - set(reference)) == []
    assert {k: s for k, s in ours.items() if reference[k] != s} == {}
    # the published parameter counts of this model
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 46_670_782
    assert sum(p.numel() for p in model.parameters()) == 46_893_182
    assert len(criterion.weight_dict) == 39
