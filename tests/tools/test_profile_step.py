"""tools/profile_step.py: the printed phase times and breakdown of a tiny step, op kinds, bad input."""
import re

import pytest

from tools import profile_step

from cli_errors import user_error

TINY = ["--image-size", "128", "128", "--batch", "1", "--repeats", "1", "--options", "enc_layers=1", "dec_layers=1",
        "num_queries=20", "dn_number=4", "hidden_dim=32", "dim_feedforward=64", "backbone=resnet18"]


def test_plain_run_prints_phases_and_a_breakdown_that_adds_up(capsys):
    profile_step.main(TINY)
    out = capsys.readouterr().out
    assert re.search(r"wall time: step [\d.]+ s \(median of 1; forward [\d.]+, losses [\d.]+, backward [\d.]+, "
                     r"optimizer [\d.]+\)", out)
    shares = [float(s) for s in re.findall(r"^\| [a-z ]+ \| [\d.]+ \| ([\d.]+)% \|$", out, re.M)]
    assert 99.0 < sum(shares) < 101.0
    kinds = re.findall(r"^\| ([a-z ]+) \| [\d.]+ \| [\d.]+% \|$", out, re.M)
    assert {"convolution", "matmul", "deformable attention", "optimizer arithmetic"} <= set(kinds)


@pytest.mark.parametrize("name,kind", [("aten::addmm", "matmul"), ("aten::mkldnn_convolution", "convolution"),
                                       ("msda::ms_deform_attn_backward", "deformable attention"),
                                       ("aten::_scaled_dot_product_flash_attention_for_cpu", "sdpa"),
                                       ("aten::copy_", "copies and layout"),
                                       ("aten::_fused_adamw_", "optimizer arithmetic"), ("aten::relu", "other")])
def test_op_kinds(name, kind):
    assert profile_step.kind_of(name) == kind


def test_against_an_unknown_revision_is_one_line(capsys):
    with user_error(capsys, "--against no-such-rev: not a commit of"):
        profile_step.main(["--against", "no-such-rev"])


def test_bad_sizes_are_refused(capsys):
    with user_error(capsys, "--image-size >= 32"):
        profile_step.main(["--image-size", "8", "8"])
