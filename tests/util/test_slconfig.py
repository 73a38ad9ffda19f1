"""Config loading, inheritance, typed --options and dumping (util/slconfig.py)."""
import textwrap

import pytest

from models.dino.schema import NOT_IMPLEMENTED
from util.slconfig import ConfigError, SLConfig, parse_option_value

DINO_4SCALE_KEYS = (
    "data_aug_scales data_aug_max_size data_aug_scales2_resize data_aug_scales2_crop data_aug_scale_overlap "
    "num_classes lr param_dict_type lr_backbone lr_backbone_names lr_linear_proj_names lr_linear_proj_mult "
    "ddetr_lr_param batch_size weight_decay epochs lr_drop save_checkpoint_interval clip_max_norm onecyclelr "
    "multi_step_lr lr_drop_list modelname frozen_weights backbone use_checkpoint dilation position_embedding "
    "pe_temperatureH pe_temperatureW return_interm_indices backbone_freeze_keywords enc_layers dec_layers "
    "unic_layers pre_norm dim_feedforward hidden_dim dropout nheads num_queries query_dim num_patterns "
    "pdetr3_bbox_embed_diff_each_layer pdetr3_refHW random_refpoints_xy fix_refpoints_hw "
    "dabdetr_yolo_like_anchor_update dabdetr_deformable_encoder dabdetr_deformable_decoder "
    "use_deformable_box_attn box_attn_type dec_layer_number num_feature_levels enc_n_points dec_n_points "
    "decoder_layer_noise dln_xy_noise dln_hw_noise add_channel_attention add_pos_value two_stage_type "
    "two_stage_pat_embed two_stage_add_query_num two_stage_bbox_embed_share two_stage_class_embed_share "
    "two_stage_learn_wh two_stage_default_hw two_stage_keep_all_tokens num_select transformer_activation "
    "batch_norm_type masks aux_loss set_cost_class set_cost_bbox set_cost_giou cls_loss_coef mask_loss_coef "
    "dice_loss_coef bbox_loss_coef giou_loss_coef enc_loss_coef interm_loss_coef no_interm_box_loss "
    "focal_alpha decoder_sa_type matcher_type decoder_module_seq nms_iou_threshold "
    "dec_pred_bbox_embed_share dec_pred_class_embed_share use_dn dn_number dn_box_noise_scale "
    "dn_label_noise_ratio embed_init_tgt dn_labelbook_size match_unstable_error use_ema ema_decay ema_epoch "
    "use_detached_boxes_dec_out").split()


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_dino_4scale_has_every_dino_key_with_dino_values():
    cfg = SLConfig.fromfile("config/DINO/DINO_4scale.py")
    assert len(DINO_4SCALE_KEYS) == 103
    # DINO's keys this project does not implement are accepted only at DINO's value, not listed
    missing = [k for k in DINO_4SCALE_KEYS if k not in cfg and k not in NOT_IMPLEMENTED]
    assert missing == []
    assert cfg.lr == 1e-4 and cfg.lr_backbone == 1e-5 and cfg.num_queries == 900 and cfg.dn_number == 100
    assert cfg.dn_box_noise_scale == 0.4 and cfg.return_interm_indices == [1, 2, 3]
    assert cfg.data_aug_scales[-1] == 800 and cfg.data_aug_max_size == 1333
    assert cfg.dn_scalar is None and cfg.dn_label_coef == 1.0 and cfg.msda_backend == "auto"


def test_5scale_and_synthetic_inherit_and_override():
    five = SLConfig.fromfile("config/DINO/DINO_5scale.py")
    assert (five.batch_size, five.num_feature_levels, five.return_interm_indices) == (1, 5, [0, 1, 2, 3])
    assert five.lr == 1e-4
    syn = SLConfig.fromfile("config/DINO/DINO_synthetic.py")
    assert syn.dataset_file == "synthetic" and syn.backbone == "resnet18" and syn.hidden_dim == 128
    assert syn.num_classes == 7 and syn.dn_labelbook_size == 7 and syn.num_queries == 100
    assert syn.set_cost_giou == 2.0  # inherited


def test_inheritance_dict_merge_and_delete(tmp_path):
    write(tmp_path, "base.py", """
        a = 1
        d = dict(x=1, y=dict(p=1, q=2))
        e = dict(x=1, y=2)
    """)
    child = write(tmp_path, "child.py", """
        _base_ = 'base.py'
        a = 2
        d = dict(y=dict(q=3))
        e = dict(_delete_=True, z=5)
    """)
    cfg = SLConfig.fromfile(child)
    assert cfg.a == 2
    assert cfg.d.to_dict() == {"x": 1, "y": {"p": 1, "q": 3}}
    assert cfg.e.to_dict() == {"z": 5}
    with pytest.raises(AttributeError):
        cfg.nope


def test_duplicate_key_across_bases_is_error(tmp_path):
    write(tmp_path, "b1.py", "k = 1\n")
    write(tmp_path, "b2.py", "k = 2\n")
    child = write(tmp_path, "c.py", "_base_ = ['b1.py', 'b2.py']\n")
    with pytest.raises(ConfigError, match="'k'.*two _base_ files"):
        SLConfig.fromfile(child)


def test_missing_base_names_both_files(tmp_path):
    child = write(tmp_path, "c.py", "_base_ = ['gone.py']\nx = 1\n")
    with pytest.raises(ConfigError) as err:
        SLConfig.fromfile(child)
    msg = str(err.value)
    assert "c.py" in msg and "gone.py" in msg and "\n" not in msg


def test_syntax_error_names_file_and_line(tmp_path):
    bad = write(tmp_path, "bad.py", "a = 1\nb = = 2\n")
    with pytest.raises(ConfigError, match=r"bad\.py:2: syntax error") as err:
        SLConfig.fromfile(bad)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text,value", [
    ("3", 3), ("-2", -2), ("1e-4", 1e-4), ("0.5", 0.5), ("TRUE", True), ("false", False), ("FaLsE", False),
    ("none", None), ("NULL", None), ("1,2,3", [1, 2, 3]), ("a,b", ["a", "b"]), ("[96]", [96]),
    ("resnet50", "resnet50"), ("1.0,x", [1.0, "x"]),
])
def test_parse_option_value(text, value):
    assert parse_option_value(text) == value
    assert type(parse_option_value(text)) is type(value)


def test_merge_options_typed_and_dotted(tmp_path):
    path = write(tmp_path, "c.py", "lr = 0.1\nn = 3\nflag = False\nname = 'a'\nopt = None\n"
                                   "scales = [1, 2]\nnest = dict(a=dict(b=1))\n")
    cfg = SLConfig.fromfile(path)
    cfg.merge_from_options({"lr": "1", "n": "5", "flag": "TRUE", "name": "b", "opt": "anything",
                            "scales": "7", "nest.a.b": "4"})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert (cfg.n, cfg.flag, cfg.name, cfg.opt, cfg.scales, cfg.nest.a.b) == (5, True, "b", "anything", [7], 4)
    cfg.merge_from_options({"scales": "3,4"})
    assert cfg.scales == [3, 4]


def test_unknown_key_suggests_close_names():
    cfg = SLConfig.fromfile("config/DINO/DINO_4scale.py")
    with pytest.raises(ConfigError, match="lr_bakbone.*did you mean.*'lr_backbone'"):
        cfg.merge_from_options({"lr_bakbone": "1"})


@pytest.mark.parametrize("key,value,expected", [
    ("epochs", "abc", "int"), ("use_ema", "1", "bool"), ("backbone", "3", "str"), ("lr", "fast", "float"),
    ("lr_drop_list", "a,b", "int"),
])
def test_wrong_type_is_error_naming_key_value_type(key, value, expected):
    cfg = SLConfig.fromfile("config/DINO/DINO_4scale.py")
    with pytest.raises(ConfigError) as err:
        cfg.merge_from_options({key: value})
    msg = str(err.value)
    assert key in msg and expected in msg and "\n" not in msg


def test_dump_roundtrip(tmp_path):
    cfg = SLConfig.fromfile("config/DINO/DINO_synthetic.py")
    cfg.merge_from_options({"hidden_dim": "64", "data_aug_scales": "96"})
    out = tmp_path / "dumped.py"
    cfg.dump(str(out))
    again = SLConfig.fromfile(str(out))
    assert again.to_dict() == cfg.to_dict()
    assert "_base_" not in again


def test_reserved_key_rejected(tmp_path):
    path = write(tmp_path, "c.py", "dump = 1\n")
    with pytest.raises(ConfigError, match="reserved"):
        SLConfig.fromfile(path)
