"""util/config_schema.py and engine/config.py: every key typed and range-checked, declared in one group
next to the code that reads it, defaults only in the config files, DINO's unimplemented keys accepted only
at DINO's value, official DINO config files still load."""
import ast
import os
import re

import pytest
import torch

import main
from engine.config import default_schema, describe, load_config, schema_for
from util.slconfig import ConfigError, SLConfig

SCHEMA_OBJ = default_schema()
SCHEMA = SCHEMA_OBJ.keys
NOT_IMPLEMENTED = SCHEMA_OBJ.not_implemented
project_defaults = SCHEMA_OBJ.defaults
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(ROOT, "config", "DINO")
# DINO_4scale.py's keys that the official DINO_4scale.py does not have (this project's additions)
PROJECT_KEYS = {"backbone_weights", "dn_label_coef", "dn_bbox_coef", "dn_scalar", "msda_backend", "use_hae",
                "num_hae_layers", "hae_dense_level", "hae_ffn", "use_emca", "emca_enc_layers",
                "emca_shared_value_proj", "emca_gate_input", "emca_output_proj", "emca_gate_init", "eval_backend",
                "val_batch_size", "skip_bad_images", "synthetic_dir",
                "synthetic_num_train", "synthetic_num_val", "synthetic_image_size", "synthetic_seed",
                "backbone_freeze_stem", "dataset_file", "fix_size"}


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_defaults_file_defines_exactly_the_schema():
    assert set(project_defaults()) == set(SCHEMA)
    assert not set(SCHEMA) & set(NOT_IMPLEMENTED)
    defaults = project_defaults()
    for name, key in SCHEMA.items():
        assert key.help and key.check(name, defaults[name]) == defaults[name], name


SHIPPED = sorted(os.path.relpath(os.path.join(d, f), os.path.join(ROOT, "config"))
                 for d, _, files in os.walk(os.path.join(ROOT, "config")) for f in files
                 if f.endswith(".py") and f != "coco_transformer.py")  # a partial (data sizes), not a config


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_resolves(name):
    cfg = load_config(os.path.join(ROOT, "config", name))
    assert set(cfg) == set(schema_for(cfg["modelname"]).keys)


def test_augdetr_configs_are_the_flags_on_the_papers_baseline():
    """config/AugDETR/X_4scale.py = the reproduction README's DINO command with X's flags."""
    readme = ["--options", "dn_scalar=100", "embed_init_tgt=TRUE", "dn_label_coef=1.0", "dn_bbox_coef=1.0",
              "use_ema=False", "dn_box_noise_scale=1.0"]
    for name, flags in (("DINO", []), ("HAE", ["--use_hae"]), ("EMCA", ["--use_emca"]),
                        ("AugDETR", ["--use_hae", "--use_emca"])):
        by_flags = main.build_args(["-c", "config/DINO/DINO_4scale.py", *flags, *readme])
        by_file = main.build_args(["-c", f"config/AugDETR/{name}_4scale.py"])
        differ = [k for k in by_file.config_keys if getattr(by_file, k) != getattr(by_flags, k)]
        assert differ == ["dn_scalar"] and by_file.dn_number == by_flags.dn_number == 100, name  # its alias


def test_official_dino_config_file_loads(tmp_path):
    """An official-style DINO_4scale.py: DINO's keys (unimplemented ones at DINO's values), none of ours."""
    values = {k: v for k, v in project_defaults().items() if k not in PROJECT_KEYS}
    values.update(NOT_IMPLEMENTED)
    text = "".join(f"{k} = {v!r}\n" for k, v in values.items())
    cfg = load_config(_write(tmp_path / "DINO_4scale.py", text))
    assert not set(cfg) & set(NOT_IMPLEMENTED)
    assert cfg["use_hae"] is False and cfg["msda_backend"] == project_defaults()["msda_backend"]
    assert cfg["num_queries"] == 900 and cfg["dn_box_noise_scale"] == 0.4


@pytest.mark.parametrize("option, match", [
    ("ddetr_lr_param=True", "ddetr_lr_param=True is not implemented here .*ddetr_lr_param=False"),
    ("query_dim=2", "query_dim=2 is not implemented here"),
    ("num_patterns=3", "num_patterns=3 is not implemented here"),
    ("masks=True", "masks=True is not implemented here"),
    ("two_stage_type=no", "two_stage_type='no' is not implemented here"),
])
def test_unimplemented_keys_refused_away_from_dino_value(option, match):
    with pytest.raises(ConfigError, match=match):
        main.build_args(["--options", option])


def test_unimplemented_keys_accepted_at_dino_value():
    args = main.build_args(["--options", "ddetr_lr_param=False", "query_dim=4", "decoder_module_seq=sa,ca,ffn"])
    assert not hasattr(args, "query_dim") and "ddetr_lr_param" not in args.config_keys


@pytest.mark.parametrize("option, match", [
    ("enc_layers=0", r"enc_layers=0 is not allowed: enc_layers must be an int >= 1"),
    ("focal_alpha=1.5", r"focal_alpha must be a number >= 0 and <= 1"),
    ("dn_label_noise_ratio=-0.1", r"dn_label_noise_ratio must be a number >= 0 and <= 1"),
    ("lr_drop=0", r"lr_drop must be an int >= 1"),
    ("save_checkpoint_interval=0", r"save_checkpoint_interval must be an int >= 1"),
    ("data_aug_max_size=-1", r"data_aug_max_size must be an int >= 1"),
    ("data_aug_scales=0,128", r"data_aug_scales must be a list of ints with items >= 1"),
    ("backbone=resnet7", r"backbone must be one of 'resnet18'"),
    ("eval_backend=cocoapi", r"eval_backend must be one of 'pycocotools', 'faster_coco_eval'"),
    ("lr=0", r"lr must be a number > 0"),
    ("lr=fast", r"lr='fast' is not allowed"),
    ("epochs=1.5", r"epochs=1.5 is not allowed: epochs must be an int"),
    ("use_ema=yes", r"use_ema='yes' is not allowed: use_ema must be true or false"),
    ("data_aug_scales2_crop=96", r"data_aug_scales2_crop must be .* of length 2"),
    ("hiden_dim=3", r"unknown config key 'hiden_dim' in --options; did you mean 'hidden_dim'"),
    ("coco_path=/x", r"pass --coco_path"),
    ("hidden_dim=100", r"hidden_dim=100 is not divisible by nheads=8"),
    ("emca_enc_layers=5", r"emca_enc_layers=\[5\] names encoder layers \[5\] of only 3"),
    ("hae_dense_level=4", r"hae_dense_level=4 is not a level index"),
    ("dn_labelbook_size=3", r"dn_labelbook_size=3 must be >= num_classes - 1 = 6"),
    ("num_feature_levels=2", r"num_feature_levels=2 is below the 3 stages"),
    ("dilation=True", r"dilation=True needs a bottleneck ResNet"),
])
def test_bad_values_are_one_line_errors(option, match):
    with pytest.raises(ConfigError, match=match) as info:
        main.build_args(["--options", option])
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_numbers_coerced_both_ways():
    args = main.build_args(["--options", "nms_iou_threshold=0.5", "lr=1", "epochs=3.0", "ema_decay=1"])
    assert args.nms_iou_threshold == 0.5 and args.lr == 1.0 and isinstance(args.lr, float)
    assert args.epochs == 3 and isinstance(args.epochs, int) and args.ema_decay == 1.0
    assert isinstance(main.build_args([]).nms_iou_threshold, float)  # -1 in the file
    assert main.build_args(["--options", "data_aug_scales=96"]).data_aug_scales == [96]


def test_dn_scalar_replaces_dn_number():
    args = main.build_args(["--options", "dn_scalar=100"])
    assert args.dn_number == 100 and args.dn_scalar == 100


def test_config_file_errors_name_the_file(tmp_path):
    bad = _write(tmp_path / "bad.py", "_base_ = ['%s']\nenc_layers = -2\n" % os.path.join(CONFIG_DIR, "DINO_4scale.py"))
    with pytest.raises(ConfigError, match=r"bad.py: config key enc_layers=-2 is not allowed"):
        load_config(bad)
    unknown = _write(tmp_path / "unknown.py", "frobnicate = 1\n")
    with pytest.raises(ConfigError, match=r"unknown.py: config key 'frobnicate' is unknown; .*--print_config"):
        load_config(unknown)
    flag = _write(tmp_path / "flag.py", "output_dir = 'x'\n")
    with pytest.raises(ConfigError, match=r"flag.py: key 'output_dir' is a command-line option only"):
        main.build_args(["-c", flag])


def test_circular_base_is_an_error(tmp_path):
    _write(tmp_path / "a.py", "_base_ = ['b.py']\nlr = 1e-4\n")
    _write(tmp_path / "b.py", "_base_ = 'a.py'\nepochs = 2\n")
    with pytest.raises(ConfigError, match=r"circular \(a.py -> b.py -> a.py\)"):
        SLConfig.fromfile(str(tmp_path / "a.py"))
    _write(tmp_path / "self.py", "_base_ = ['self.py']\n")
    with pytest.raises(ConfigError, match="circular"):
        SLConfig.fromfile(str(tmp_path / "self.py"))
    _write(tmp_path / "typo.py", "_base_ = 3\n")
    with pytest.raises(ConfigError, match="_base_ must be a file name"):
        SLConfig.fromfile(str(tmp_path / "typo.py"))


def test_missing_device_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA device"):
        main.build_args(["--device", "cuda"])
    with pytest.raises(ConfigError, match="not a device name"):
        main.build_args(["--device", "gpu0"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match="has 2 CUDA device"):
        main.build_args(["--device", "cuda:2"])
    assert main.build_args(["--device", "cuda:1"]).device == "cuda:1"


def test_print_config_lists_every_key(capsys):
    assert main.cli(["--print_config", "--options", "lr=0.5"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert len(lines) == len(SCHEMA)
    by_key = {re.match(r"(\w+) = ", line).group(1): line for line in lines}
    assert set(by_key) == set(SCHEMA)
    assert re.search(r"lr = 0\.5 +# learning rate", by_key["lr"])
    described = describe(project_defaults())
    headings = [i for i, line in enumerate(described) if line.startswith("# ---- ")]
    assert len(described) == len(SCHEMA) + len(SCHEMA_OBJ.groups) == len(SCHEMA) + len(headings)
    # every key under its own group's heading
    for group, start in zip(SCHEMA_OBJ.groups, headings):
        assert described[start] == f"# ---- {group.title}"
        keys = [line.split(" = ")[0] for line in described[start + 1:start + 1 + len(group.keys)]]
        assert keys == list(group.keys)


def test_no_builder_reads_settings_with_a_fallback():
    """Settings come from the checked config: no getattr(args, ..., default) outside tests."""
    offenders = []
    for folder in ("models", "datasets", "util", "tools", "engine", "main.py"):
        path = os.path.join(ROOT, folder)
        files = [path] if path.endswith(".py") else [os.path.join(d, f) for d, _, fs in os.walk(path)
                                                     for f in fs if f.endswith(".py")]
        for file in files:
            for node in ast.walk(ast.parse(open(file).read())):
                if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr"
                        and len(node.args) == 3 and getattr(node.args[0], "id", None) in ("args", "cfg")):
                    offenders.append(f"{os.path.relpath(file, ROOT)}:{node.lineno}")
    assert not offenders
