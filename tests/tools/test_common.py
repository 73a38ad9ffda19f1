"""tools/common.py: the model config taken from a checkpoint's stored args."""
import pytest

from tools import common
from util.checkpoint import load_checkpoint, save_checkpoint


def test_stored_config_with_options_on_top(stored_config_checkpoint):
    saved = dict(load_checkpoint(stored_config_checkpoint)["args"], config_file="/elsewhere/not_here.py")
    args = common.args_from_stored(saved, "ckpt.pth", ["num_select=5"])
    # the stored keys build the model (the file need not exist here), --options win over them
    assert (args.hidden_dim, args.enc_layers, args.num_select) == (32, 1, 5)
    assert args.config_file == "/elsewhere/not_here.py" and args.backbone_weights is None


def test_which_checkpoints_store_a_config(stored_config_checkpoint, tiny_checkpoint):
    assert common.stored_config(load_checkpoint(stored_config_checkpoint)) is not None
    assert common.stored_config(load_checkpoint(tiny_checkpoint)) is None  # weights only
    assert common.stored_config({"args": {"lr": 1e-4}}) is None  # args without a config


def test_stored_values_that_do_not_resolve_ask_for_c(stored_config_checkpoint, tmp_path):
    ckpt = load_checkpoint(stored_config_checkpoint)
    ckpt["args"]["hidden_dim"] = "wide"
    path = str(tmp_path / "odd.pth")
    save_checkpoint({k: v for k, v in ckpt.items() if not k.startswith("_")}, path)
    with pytest.raises(common.ToolError, match=r"hidden_dim.*'wide'.*; pass -c <the config it was trained with>"):
        common.load_tool_model(None, path)


def test_c_is_needed_without_a_checkpoint():
    with pytest.raises(common.ToolError, match="-c CONFIG is required without --checkpoint"):
        common.load_tool_model(None, None)
