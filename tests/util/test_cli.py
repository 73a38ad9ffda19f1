"""One style and one exit status for user errors (util/cli.py): main.py and the tools print one line
`<prog>: error: ...` and exit 2, mistyped flags get the closest known ones, and Ctrl-C ends with one line
saying how to resume (tests/reliability/test_interrupt.py; issue 26, item 10)."""
import os
import subprocess

import pytest

import main
from tools import inference
from util.cli import closest_flags

from cli_errors import user_error


def test_closest_flags_take_dash_and_underscore_as_one():
    known = ["--use_hae", "--use_emca", "--num_hae_layers", "--output_dir", "-c", "--config_file"]
    assert closest_flags("--use-hae", known) == ["--use_hae"]
    assert closest_flags("--Output-Dir=x", known) == ["--output_dir"]
    assert closest_flags("--num_hea_layers", known) == ["--num_hae_layers"]
    assert closest_flags("--zzz", known) == []


def test_mistyped_flags_get_a_suggestion_in_one_line(capsys):
    with user_error(capsys, r"^main.py: error: unrecognized argument: --use-hae \(did you mean --use_hae\?\) "
                            r"\(see main.py --help\)$"):
        main.cli(["--use-hae"])
    with user_error(capsys, r"unrecognized arguments: --threshhold \(did you mean --threshold\?\), 0.3$|"
                            r"--threshhold \(did you mean --threshold\?\)"):
        inference.main(["--checkpoint", "c.pth", "--input", "x", "--output", "o", "--threshhold", "0.3"])


def test_tools_exit_2_for_the_mistakes_main_py_exits_2_for(tmp_path, capsys):
    """A missing checkpoint file: main.py and inference.py both say so in one line, with exit status 2."""
    (tmp_path / "checkpoint0003.pth").write_bytes(b"")
    missing = str(tmp_path / "checkpoint.pth")
    assert main.cli(["--eval", "--resume", missing]) == 2
    line = capsys.readouterr().err.strip()
    assert line == f"main.py: error: --resume {missing}: no such file; checkpoints in {tmp_path}: checkpoint0003.pth"
    with user_error(capsys, f"inference.py: error: --checkpoint {missing}: no such file; checkpoints in {tmp_path}: "
                            f"checkpoint0003.pth"):
        inference.main(["--checkpoint", missing, "--input", str(tmp_path), "--output", str(tmp_path / "o")])


@pytest.mark.parametrize("script", ["ablation_table4.sh", "ablation_main_table.sh"])
def test_ablation_scripts_document_their_quick_mode_in_help(script):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(["bash", os.path.join(root, "scripts", script), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--synthetic" in proc.stdout and "SYNTHETIC_EPOCHS" in proc.stdout
