"""CLI (build_args) and end-to-end train -> checkpoint -> resume -> eval runs (main.py)."""
import json
import os
import re

import pytest
import torch

import main
from util.checkpoint import load_checkpoint
from util.slconfig import ConfigError

from coco_layouts import make_test_dev_layout
from tiny_configs import RUN, options

README_OPTS = ("--options dn_scalar=100 embed_init_tgt=TRUE dn_label_coef=1.0 dn_bbox_coef=1.0 use_ema=False "
               "dn_box_noise_scale=1.0")
README_COMMANDS = [
    f"--output_dir logs/DINO/R50-MS4 -c config/DINO/DINO_4scale.py --coco_path /data/coco {README_OPTS} --use_hae",
    f"--output_dir logs/DINO/R50-MS4 -c config/DINO/DINO_4scale.py --coco_path /data/coco {README_OPTS} --use_emca",
    f"--output_dir logs/DINO/R50-MS4 -c config/DINO/DINO_4scale.py --coco_path /data/coco {README_OPTS} "
    "--use_hae --use_emca",
    "--output_dir logs/DINO/R50-MS4-%j -c config/DINO/DINO_4scale.py --coco_path /data/coco --eval "
    f"--resume CKPT {README_OPTS} --use_hae --use_emca",
]


@pytest.mark.parametrize("cmd", README_COMMANDS)
def test_readme_commands_parse(cmd, tmp_path):
    ckpt = tmp_path / "ckpt.pth"
    ckpt.write_bytes(b"")  # a checkpoint named must exist before anything is built; -c names the config
    args = main.build_args(cmd.replace("CKPT", str(ckpt)).split())
    assert args.dn_number == 100 and args.dn_scalar == 100 and args.dn_box_noise_scale == 1.0
    assert args.embed_init_tgt is True and args.use_ema is False and args.num_hae_layers == 2
    assert args.use_hae == ("--use_hae" in cmd) and args.use_emca == ("--use_emca" in cmd)
    assert args.hidden_dim == 256 and args.coco_path == "/data/coco"


def test_defaults():
    args = main.build_args([])
    assert args.config_file == "config/DINO/DINO_synthetic.py" and args.dataset_file == "synthetic"
    assert args.output_dir == os.path.join("logs", "DINO_synthetic") and args.num_workers == 2
    assert args.device in ("cpu", "cuda") and args.use_hae is False and args.eval_backend == "pycocotools"


def test_cli_wins_over_options_and_config():
    args = main.build_args(["--options", "use_hae=True", "num_hae_layers=3", "eval_backend=faster_coco_eval"])
    assert (args.use_hae, args.num_hae_layers, args.eval_backend) == (True, 3, "faster_coco_eval")
    args = main.build_args(["--options", "num_hae_layers=3", "--num_hybrid_layers", "1",
                            "--eval_backend", "pycocotools", "--dataset_file", "synthetic"])
    assert args.num_hae_layers == 1 and args.eval_backend == "pycocotools"


def test_errors_are_one_line():
    assert main.build_args(["-c", "config/DINO/DINO_4scale.py"]).coco_path is None  # checked when data is read
    with pytest.raises(ConfigError, match="did you mean 'hidden_dim'"):
        main.build_args(["--options", "hiden_dim=3"])
    with pytest.raises(ConfigError, match="pass --coco_path"):
        main.build_args(["--options", "coco_path=/x"])


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        main.build_args(["--help"])
    text = capsys.readouterr().out
    flags = {s for a in main.get_args_parser()._actions for s in a.option_strings}
    assert not [f for f in flags if f not in text]
    assert "examples:" in text
    for action in main.get_args_parser()._actions:
        assert action.help, action.dest


# the shared tiny run (tests/tiny_configs.py) with 20 queries (the test-dev detection count below)
TINY = options(RUN, epochs=1, synthetic_num_train=8, synthetic_num_val=4, num_queries=20, num_select=20)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("synthetic"))


def tiny_args(out, synthetic_dir, *extra, options=()):
    """build_args of the tiny run; out=None leaves --output_dir to main.py."""
    argv = [*(["--output_dir", str(out)] if out is not None else []), "--num_workers", "0", "--device", "cpu", *extra,
            "--options", *TINY, f"synthetic_dir={synthetic_dir}", *options]
    return main.build_args(argv)


def read_log(out):
    with open(os.path.join(out, "log.txt")) as f:
        return [json.loads(line) for line in f]


EMA = ["use_ema=True", "ema_decay=0.9"]


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, synthetic_dir):
    """A 1-epoch run, then an auto-resumed run to 2 epochs in the same output_dir (both with EMA)."""
    out = tmp_path_factory.mktemp("resumed")
    main.main(tiny_args(out, synthetic_dir, options=EMA))
    first = set(os.listdir(out))
    main.main(tiny_args(out, synthetic_dir, options=["epochs=2", *EMA]))
    return out, first


def test_train_writes_checkpoints_and_logs(resumed_run):
    out, first = resumed_run
    assert {"checkpoint.pth", "checkpoint0000.pth", "checkpoint_best_regular.pth", "checkpoint_best_ema.pth",
            "log.txt", "info.txt", "config_cfg.py", "config_args_all.json", "predictions.png"} <= first
    from PIL import Image
    with Image.open(out / "predictions.png") as png:  # 4 val images of <= 96 px, upscaled for drawing, 2 x 2
        assert png.format == "PNG" and png.width >= 2 * 96 and png.height >= 2 * 96
    ckpt = load_checkpoint(str(out / "checkpoint0000.pth"))
    assert ckpt["epoch"] == 0 and isinstance(ckpt["args"], dict) and ckpt["args"]["hidden_dim"] == 64
    line = read_log(out)[0]
    assert line["epoch"] == 0 and len(line["test_coco_eval_bbox"]) == 12 and "train_loss" in line
    assert line["train_nonfinite_steps"] == 0 and line["n_parameters"] > 0
    # auto-resume continued at epoch 1 and appended a line
    assert [entry["epoch"] for entry in read_log(out)] == [0, 1]
    from util.slconfig import SLConfig
    assert SLConfig.fromfile(str(out / "config_cfg.py")).hidden_dim == 64


def test_exact_resume_matches_uninterrupted_run(tmp_path, resumed_run, synthetic_dir):
    out, _ = resumed_run
    main.main(tiny_args(tmp_path, synthetic_dir, options=["epochs=2", *EMA]))
    a = load_checkpoint(str(tmp_path / "checkpoint.pth"))
    b = load_checkpoint(str(out / "checkpoint.pth"))
    assert a["epoch"] == b["epoch"] == 1
    for part in ("model", "ema_model"):  # the EMA state is restored on resume, not restarted
        assert a[part].keys() == b[part].keys()
        diff = [k for k in a[part] if not torch.equal(a[part][k], b[part][k])]
        assert diff == [], part


def test_ema_is_evaluated_and_its_best_checkpoint_saved(resumed_run):
    out, _ = resumed_run
    lines = read_log(out)
    ema_aps = [line["ema_test_coco_eval_bbox"][0] for line in lines]
    assert len(lines[-1]["ema_test_coco_eval_bbox"]) == 12 and lines[-1]["best_ema_ap"] == max(ema_aps)
    best = load_checkpoint(str(out / "checkpoint_best_ema.pth"))
    best_epoch = ema_aps.index(max(ema_aps))
    assert best["epoch"] == best_epoch and set(best) == {"model", "epoch", "args"}
    # "model" holds that epoch's EMA weights, which differ from its trained weights
    same_epoch = load_checkpoint(str(out / ("checkpoint0000.pth" if best_epoch == 0 else "checkpoint.pth")))
    assert all(torch.equal(best["model"][k], v) for k, v in same_epoch["ema_model"].items())
    assert any(not torch.equal(same_epoch["model"][k], v) for k, v in best["model"].items() if v.is_floating_point())


def test_eval_only_explicit_resume_wins_and_saves_results(resumed_run, synthetic_dir, capsys):
    """--eval into a training run's folder goes to <run>/eval/<checkpoint stem>: the run's log.txt and
    config dumps stay as training wrote them."""
    out, _ = resumed_run
    before = {name: (out / name).read_bytes() for name in ("log.txt", "config_args_all.json", "config_cfg.py")}
    main.main(tiny_args(out, synthetic_dir, "--eval", "--save_results", "--resume", str(out / "checkpoint0000.pth")))
    assert "auto-resume" not in capsys.readouterr().out
    assert before == {name: (out / name).read_bytes() for name in before}
    eval_dir = out / "eval" / "checkpoint0000"
    last = read_log(eval_dir)[-1]
    assert "test_coco_eval_bbox" in last and "epoch" not in last and last["mode"] == "eval"
    assert last["checkpoint"] == str(out / "checkpoint0000.pth") and last["debug"] is False
    with open(eval_dir / "results.json") as f:
        dets = json.load(f)
    assert dets and set(dets[0]) >= {"image_id", "category_id", "bbox", "score"}
    # without --output_dir: beside the checkpoint; --debug subsets get their own folder
    main.main(tiny_args(None, synthetic_dir, "--eval", "--debug", "--resume", str(out / "checkpoint.pth")))
    assert read_log(out / "eval" / "checkpoint-debug")[-1]["debug"] is True
    assert before == {name: (out / name).read_bytes() for name in before}


def test_eval_without_weights_is_an_error(tmp_path, synthetic_dir):
    with pytest.raises(main.ConfigError, match=r"--eval needs trained weights: pass --resume CHECKPOINT"):
        main.main(tiny_args(tmp_path, synthetic_dir, "--eval"))
    assert not (tmp_path / "log.txt").exists()


def test_finished_run_says_so(resumed_run, synthetic_dir, caplog):
    out, _ = resumed_run
    epochs = len([r for r in read_log(out) if "epoch" in r])
    before = (out / "log.txt").read_bytes()
    main.main(tiny_args(out, synthetic_dir, options=[f"epochs={epochs}", *EMA]))
    assert before == (out / "log.txt").read_bytes()
    assert re.search(rf"training is complete: {epochs} of {epochs} epochs .* best AP [\d.]+, last AP [\d.]+",
                     (out / "info.txt").read_text())


def test_output_dir_patterns(tmp_path, synthetic_dir, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    ckpt = tmp_path / "x.pth"
    ckpt.write_bytes(b"")  # not read here
    args = tiny_args(str(tmp_path / "R50-%j"), synthetic_dir, "--eval", "--resume", str(ckpt))
    main.settle_output_dir(args)
    assert args.output_dir == str(tmp_path / "R50-4242")
    monkeypatch.delenv("SLURM_JOB_ID")
    with pytest.raises(main.ConfigError, match="SLURM_JOB_ID is not set"):  # training
        main.settle_output_dir(tiny_args(str(tmp_path / "R50-%j"), synthetic_dir))
    # the AugDETR README's evaluation commands use R50-MS4-%j outside SLURM as well
    args = tiny_args(str(tmp_path / "R50-%j"), synthetic_dir, "--eval", "--resume", str(ckpt))
    main.settle_output_dir(args)
    assert re.fullmatch(re.escape(str(tmp_path)) + r"/R50-local-\d{8}-\d{6}", args.output_dir)


def test_flag_and_environment_errors(monkeypatch):
    with pytest.raises(main.ConfigError, match="--save_emca_weights .* the model must use EMCA .*add --use_emca"):
        main.build_args(["--eval", "--save_emca_weights"])
    with pytest.raises(main.ConfigError, match="--save_emca_weights records during an evaluation: add --eval"):
        main.build_args(["--use_emca", "--save_emca_weights"])
    assert main.build_args(["--eval", "--use_emca", "--save_emca_weights"]).save_emca_weights
    monkeypatch.setenv("MSDA_BACKEND", "bogus")
    with pytest.raises(main.ConfigError, match="MSDA_BACKEND='bogus' is not one of auto, compiled, pytorch"):
        main.build_args([])


def test_mismatched_checkpoint_is_clear_error(tmp_path, resumed_run, synthetic_dir, capsys):
    out, _ = resumed_run
    capsys.readouterr()
    with pytest.raises(main.CheckpointError, match=r"does not fit this model: it was trained with "
                       r"config/DINO/DINO_synthetic.py, this run's model comes from the config stored in it; "
                       r"differing keys: hidden_dim=64 \(now 32\); \d+ tensors differ \(missing, extra or of another "
                       r"shape\); drop --options hidden_dim=32 \(full list in info.txt\)$") as info:
        main.main(tiny_args(tmp_path, synthetic_dir, "--eval", "--resume", str(out / "checkpoint.pth"),
                            options=["hidden_dim=32"]))
    assert len(str(info.value).replace(str(out), "")) < 350
    assert "full load error" in (tmp_path / "info.txt").read_text()
    assert "full load error" not in capsys.readouterr().out  # the console gets the one-line error only
    # the fix works: without the option the stored config builds the model (no -c needed)
    main.main(tiny_args(tmp_path, synthetic_dir, "--eval", "--debug", "--resume", str(out / "checkpoint.pth")))


def test_test_dev_detections_equal_eval_results(tmp_path, resumed_run, synthetic_dir):
    """--test writes the server's file name with the same detections --eval --save_results gives on the
    same images."""
    out, _ = resumed_run
    ckpt = str(out / "checkpoint.pth")
    image_ids = make_test_dev_layout(tmp_path / "coco", synthetic_dir)
    stats = main.main(tiny_args(tmp_path / "test", synthetic_dir, "--test", "--resume", ckpt, "--note", "my run!",
                                "--dataset_file", "coco", "--coco_path", str(tmp_path / "coco")))
    name = "detections_test-dev2017_myrun_results.json"
    assert stats == {"test_dev_images": len(image_ids), "test_dev_results": name, "test_dev_detections": 20 * 4}
    main.main(tiny_args(tmp_path / "eval", synthetic_dir, "--eval", "--save_results", "--resume", ckpt))
    with open(tmp_path / "test" / name) as f:
        test_dev = json.load(f)
    with open(tmp_path / "eval" / "results.json") as f:
        val = json.load(f)
    assert {d["image_id"] for d in test_dev} == image_ids and test_dev == val
    assert read_log(tmp_path / "test")[-1]["test_dev_detections"] == 80


def test_test_dev_needs_weights_and_the_split(tmp_path, resumed_run, synthetic_dir):  # resumed_run: data made
    make_test_dev_layout(tmp_path / "coco", synthetic_dir)
    with pytest.raises(main.ConfigError, match="--test needs trained weights"):
        main.main(tiny_args(tmp_path / "a", synthetic_dir, "--test", "--dataset_file", "coco",
                            "--coco_path", str(tmp_path / "coco")))
    from datasets import DataError
    with pytest.raises(DataError, match=r"test2017/ with the images"):
        main.main(tiny_args(tmp_path / "b", synthetic_dir, "--test", "--resume",
                            str(resumed_run[0] / "checkpoint.pth")))
