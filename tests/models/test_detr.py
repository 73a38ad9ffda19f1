"""DETR's configs and config keys: every released configuration resolves, the defaults file sets every key DETR
uses, and the keys of the deformable-attention detectors (AugDETR's flags among them) are one-line errors
saying why (main.py's config checks)."""
import pytest

import main


def one_line_error(code, err):
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("main.py: error: "), err
    return lines[0]


def cli(argv, capsys):
    code = main.cli(argv)
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("flag, needle", [
    (["--use_hae"], "use_hae: DETR has no deformable attention"),
    (["--use_emca"], "use_emca: DETR has no deformable attention"),
    (["--options", "num_hae_layers=1"], "num_hae_layers: DETR has no deformable attention"),
    (["--options", "enc_n_points=2"], "enc_n_points: DETR has no deformable attention"),
    (["--options", "dn_number=10"], "dn_number: DETR has no two-stage selection or denoising queries"),
    (["--options", "criterion_type=aligndetr"], "criterion_type: it is a key of AlignDETR"),
])
def test_other_detectors_keys_are_one_line_errors(flag, needle, capsys):
    line = one_line_error(*cli(["-c", "config/DETR/detr_synthetic.py", *flag, "--print_config"], capsys))
    assert needle in line


def test_return_interm_indices_must_be_one_level(capsys):
    line = one_line_error(*cli(["-c", "config/DETR/detr_synthetic.py", "--print_config", "--options",
                                "return_interm_indices=[2,3]"], capsys))
    assert "DETR reads one backbone level" in line


@pytest.mark.parametrize("config", ["detr_r50.py", "detr_r50_300ep.py", "detr_r50_dc5.py", "detr_r101.py",
                                    "detr_r101_dc5.py", "detr_synthetic.py"])
def test_configs_resolve(config):
    args = main.build_args(["-c", f"config/DETR/{config}"])
    assert args.modelname == "detr" and args.return_interm_indices == [3] and args.pe_temperatureH == 10000
    assert (args.dilation, args.backbone.endswith("101")) == ("dc5" in config, "r101" in config)
    assert (args.epochs, args.lr_drop) == {"detr_r50_300ep.py": (300, 200), "detr_synthetic.py": (14, 12)}.get(
        config, (500, 400))


def test_defaults_file_sets_every_key_detr_uses():
    from engine.config import schema_for
    from util.slconfig import SLConfig
    schema = schema_for("detr")
    written = SLConfig.fromfile(schema.defaults_file).to_dict()
    assert schema.defaults_file.endswith("config/DETR/detr_r50.py")
    assert sorted(k for k in schema.keys if k not in written) == []


