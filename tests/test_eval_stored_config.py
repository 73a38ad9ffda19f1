"""--eval / --test build the model the checkpoint was trained with (its stored config) unless -c is given,
and a checkpoint that does not fit is one line naming the keys that cause it and a fix that works
(issue 26, item 2)."""
import json
import re

import pytest

import main
from models import build_model
from tools.common import tool_args
from util.checkpoint import CheckpointError, args_to_dict, save_checkpoint

from tiny_configs import RUN, options

AUGDETR = "config/AugDETR/AugDETR_synthetic.py"
# the shared tiny run with 2 encoder layers (AugDETR's 2 hybrid layers) on 4 + 2 synthetic images
TINY = options(RUN, enc_layers=2, synthetic_num_train=4, synthetic_num_val=2, synthetic_image_size=96,
               val_batch_size=2)


@pytest.fixture(scope="module")
def augdetr_checkpoint(tmp_path_factory):
    """A tiny AugDETR (HAE + EMCA) checkpoint saved as main.py saves it (its args hold the config)."""
    args = tool_args(AUGDETR, TINY)
    path = tmp_path_factory.mktemp("aug") / "checkpoint.pth"
    save_checkpoint({"model": build_model(args)[0].state_dict(), "epoch": 0, "args": args_to_dict(args)}, str(path))
    return str(path)


def eval_argv(out, syn, *extra):
    return ["--output_dir", str(out), "--num_workers", "0", "--device", "cpu", "--eval", *extra,
            "--options", *TINY, f"synthetic_dir={syn}"]


def test_eval_builds_the_stored_config_and_records_emca_weights(augdetr_checkpoint, tmp_path, capsys):
    """The README's EMCA-weights command on an AugDETR checkpoint: no -c, the flags on top are logged."""
    args = main.build_args(eval_argv(tmp_path / "out", tmp_path / "syn", "--resume", augdetr_checkpoint,
                                     "--use_emca", "--save_emca_weights"))
    assert (args.config_file, args.use_hae, args.use_emca, args.enc_layers) == (AUGDETR, True, True, 2)
    note = args.setup_notes[0]
    assert note.startswith(f"model config: the one stored in {augdetr_checkpoint} (trained with {AUGDETR}); on top "
                           f"of it: ") and "use_emca=True (as stored)" in note and "enc_layers=2 (as stored)" in note
    main.main(args)
    with open(tmp_path / "out" / "emca_weights.json") as f:
        assert len(json.load(f)["mean"]) == 2  # the two encoder layers EMCA mixes
    info = (tmp_path / "out" / "info.txt").read_text()
    assert note in info and f"(written to {tmp_path / 'out' / 'emca_weights.json'})" in info


def test_an_option_on_top_that_changes_the_model_is_named_with_its_fix(augdetr_checkpoint, tmp_path):
    args = main.build_args(eval_argv(tmp_path, tmp_path / "syn", "--resume", augdetr_checkpoint, "--options",
                                     "num_hae_layers=1"))
    assert args.num_hae_layers == 1 and "num_hae_layers=1 (stored 2)" in args.setup_notes[0]
    with pytest.raises(CheckpointError, match=r"this run's model comes from the config stored in it; differing "
                                              r"keys: num_hae_layers=2 \(now 1\); .*; drop --options "
                                              r"num_hae_layers=1 \(full list in info.txt\)$"):
        main.main(args)


def test_an_explicit_config_wins_and_the_misfit_puts_the_real_keys_first(augdetr_checkpoint, tmp_path):
    """-c DINO_synthetic.py with a forward-only key changed too: use_hae / use_emca change the tensors and are
    named first; the suggested --options make the checkpoint fit."""
    argv = eval_argv(tmp_path / "a", tmp_path / "syn", "-c", "config/DINO/DINO_synthetic.py", "--resume",
                     augdetr_checkpoint)
    args = main.build_args([*argv, "pe_temperatureH=10", "pe_temperatureW=10"])
    assert args.config_file == "config/DINO/DINO_synthetic.py" and args.use_hae is False
    with pytest.raises(CheckpointError) as err:
        main.main(args)
    line = str(err.value)
    assert ("differing keys: use_hae=True (now False), use_emca=True (now False), pe_temperatureH=20.0 (now 10.0) "
            "(+1 more, none of them changing tensor shapes)") in line, line
    fix = re.search(r"or add --options (.*) \(full list", line).group(1).split()
    assert "leave out -c (the model is then built from the config stored in the checkpoint)" in line
    assert fix == ["use_hae=True", "use_emca=True"]
    args = main.build_args([*eval_argv(tmp_path / "b", tmp_path / "syn", "-c", "config/DINO/DINO_synthetic.py",
                                       "--resume", augdetr_checkpoint), *fix])
    main.main(args)  # loads strictly now


def test_a_missing_checkpoint_is_reported_before_anything_is_built(augdetr_checkpoint, tmp_path, capsys):
    missing = augdetr_checkpoint.replace("checkpoint.pth", "checkpoint0007.pth")
    assert main.cli(["--eval", "--resume", missing, "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    folder = missing.rsplit("/", 1)[0]
    assert err == f"main.py: error: --resume {missing}: no such file; checkpoints in {folder}: checkpoint.pth"
    assert not list(tmp_path.iterdir())  # nothing was written
    assert main.cli(["--pretrain_model_path", str(tmp_path / "gone" / "x.pth")]) == 2
    assert "the folder" in capsys.readouterr().err
