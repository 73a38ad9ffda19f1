"""The config keys: type, allowed values and a one-line description of each.

Defaults live only in the config files (config/DINO/*.py); this module says what a value
may be. `resolve_config` turns a loaded config into the checked dict the builders read:

* every key must be known here; a key DINO's official configs carry but this project does
  not implement (`NOT_IMPLEMENTED`) is accepted only at DINO's value and then dropped;
* a config that lacks a key (an official DINO file lacks this project's keys) takes the
  value of `config/DINO/DINO_4scale.py`, the file that defines every key;
* every value is coerced to its key's type (an int where a float is expected, an integral
  float where an int is expected) and checked against its range or choices; a violation
  is a one-line ConfigError naming the key, the value and what is allowed.
"""
import difflib
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from util.slconfig import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULTS_FILE = os.path.join(ROOT, "config", "DINO", "DINO_4scale.py")

_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


@dataclass(frozen=True)
class Key:
    """One config key. kind: 'int' | 'float' | 'bool' | 'str' | 'list[int]' | 'list[float]' |
    'list[str]'; low/high bound numbers (and list items); low_open excludes `low` itself;
    choices lists the allowed values; none_ok allows None; length bounds a list's length."""
    kind: str
    help: str
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    choices: Optional[Tuple] = None
    none_ok: bool = False
    length: Tuple[int, Optional[int]] = (0, None)

    def allowed(self) -> str:
        """Human text of what this key accepts, e.g. 'an int >= 1' or 'one of 'a', 'b''."""
        if self.choices is not None:
            names = [repr(c) for c in self.choices]
            if len(names) > 8:  # a long list (backbone): the first names and where all are, to stay one short line
                names = names[:6] + [f"... ({len(names)} names, all in util/config_schema.py)"]
            text = "one of " + ", ".join(names)
        else:
            text = {"int": "an int", "float": "a number", "bool": "true or false", "str": "a string"}.get(
                self.kind, f"a list of {self.kind[5:-1]}s")
            bounds = []
            if self.low is not None:
                bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
            if self.high is not None:
                bounds.append(f"<= {self.high:g}")
            if bounds:
                text += (" with items " if self.kind.startswith("list") else " ") + " and ".join(bounds)
        if self.kind.startswith("list") and self.length != (0, None):
            lo, hi = self.length
            text += f" of length {lo}" + ("" if hi == lo else f"..{hi}" if hi else "+")
        return text + (", or none" if self.none_ok else "")

    def check(self, name: str, value: Any) -> Any:
        """The value coerced to this key's type; ConfigError when it is not allowed."""
        if value is None:
            if self.none_ok:
                return None
            raise _bad(name, value, self)
        if self.kind.startswith("list"):
            items = list(value) if isinstance(value, (list, tuple)) else [value]  # `scales=96` -> [96]
            lo, hi = self.length
            if len(items) < lo or (hi is not None and len(items) > hi):
                raise _bad(name, value, self)
            item_key = Key(self.kind[5:-1], self.help, self.low, self.high, self.low_open, self.choices)
            try:
                return [item_key.check(name, v) for v in items]
            except ConfigError:
                raise _bad(name, value, self) from None
        coerced = _coerce(self.kind, value)
        if coerced is _INVALID or (self.choices is not None and coerced not in self.choices):
            raise _bad(name, value, self)
        value = coerced
        if self.kind in ("int", "float"):
            if isinstance(value, float) and not math.isfinite(value):
                raise _bad(name, value, self)
            if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
                raise _bad(name, value, self)
            if self.high is not None and value > self.high:
                raise _bad(name, value, self)
        return value


_INVALID = object()


def _coerce(kind: str, value: Any) -> Any:
    """int <-> float where no information is lost; everything else must already have the type."""
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind == "int" and not isinstance(value, bool):
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return _INVALID
    return value if isinstance(value, _TYPES[kind]) else _INVALID


def _bad(name: str, value: Any, key: Key) -> ConfigError:
    return ConfigError(f"{name}={value!r} is not allowed: {name} must be {key.allowed()}")


def _int(help, low=None, high=None, **kw):
    return Key("int", help, low, high, **kw)


def _float(help, low=None, high=None, **kw):
    return Key("float", help, low, high, **kw)


def _bool(help):
    return Key("bool", help)


def _choice(help, *choices, none_ok=False):
    return Key("str", help, choices=tuple(choices), none_ok=none_ok)


def _prob(help):
    return Key("float", help, 0.0, 1.0)


SIZES = dict(low=1)  # image sizes in pixels
SCHEMA: Dict[str, Key] = {
    # ---- data
    "data_aug_scales": Key("list[int]", "train short-side sizes (val: the largest)", length=(1, None), **SIZES),
    "data_aug_max_size": _int("longest image side after resizing (px)", 1),
    "data_aug_scales2_resize": Key("list[int]", "short sides of the resize before the random crop", length=(1, None),
                                   **SIZES),
    "data_aug_scales2_crop": Key("list[int]", "min and max side of the random crop (px)", length=(2, 2), **SIZES),
    "data_aug_scale_overlap": _float("scale all data_aug sizes by this factor (none = 1)", 0, low_open=True,
                                     none_ok=True),
    "num_classes": _int("classification outputs: max category id + 1 (labels are raw category ids)", 1),
    "dataset_file": _choice("dataset: COCO layout at --coco_path, or the generated synthetic set",
                            "coco", "synthetic"),
    "fix_size": _bool("train transform = flip + one fixed resize"),
    "skip_bad_images": _bool("skip unreadable images with a warning instead of failing"),
    "val_batch_size": _int("evaluation images per batch (DINO uses 1: padding changes AP)", 1),
    "synthetic_dir": Key("str", "folder of the generated synthetic dataset (none = ~/.cache/augdetr)", none_ok=True),
    "synthetic_num_train": _int("synthetic train images", 1),
    "synthetic_num_val": _int("synthetic val images", 1),
    "synthetic_image_size": _int("synthetic image side (px)", 32),
    "synthetic_seed": _int("seed of the synthetic dataset's generator", 0),
    "eval_backend": _choice("COCO evaluation library", "pycocotools", "faster_coco_eval"),
    # ---- optimisation
    "lr": _float("learning rate of the transformer and heads (AdamW)", 0, low_open=True),
    "lr_backbone": _float("learning rate of parameters named in lr_backbone_names; <= 0 freezes them"),
    "lr_backbone_names": Key("list[str]", "substrings of the backbone's parameter names", length=(1, None)),
    "batch_size": _int("training images per process", 1),
    "weight_decay": _float("AdamW weight decay", 0),
    "epochs": _int("training epochs", 1),
    "lr_drop": _int("StepLR: divide the lr by 10 every this many epochs", 1),
    "save_checkpoint_interval": _int("write checkpointNNNN.pth every this many epochs", 1),
    "clip_max_norm": _float("gradient-norm clipping (<= 0: off)"),
    "onecyclelr": _bool("OneCycleLR stepped per iteration instead of StepLR"),
    "multi_step_lr": _bool("MultiStepLR at lr_drop_list instead of StepLR"),
    "lr_drop_list": Key("list[int]", "MultiStepLR milestones (epochs)", 1),
    "use_ema": _bool("keep and evaluate an exponential moving average of the weights"),
    "ema_decay": _prob("EMA decay per iteration"),
    "ema_epoch": _int("first epoch that updates the EMA", 0),
    # ---- model / backbone
    "modelname": _choice("detector", "dino"),
    "backbone": _choice("torchvision ResNet, or Swin / ConvNeXt built with timm (DINO's names)",
                        "resnet18", "resnet34", "resnet50", "resnet101", "swin_T_224_1k", "swin_S_224_1k",
                        "swin_B_224_22k", "swin_B_384_22k", "swin_L_224_22k", "swin_L_384_22k", "convnext_tiny_1k",
                        "convnext_small_1k", "convnext_base_22k", "convnext_large_22k", "convnext_xlarge_22k"),
    "backbone_weights": Key("str", "ImageNet weights: a torchvision weights name (e.g. IMAGENET1K_V1, through the "
                            "torch hub cache), a .pth path, or none = random init; Swin/ConvNeXt: a .pth path, none, "
                            "or a name = DINO's file in backbone_dir", none_ok=True),
    "backbone_dir": Key("str", "folder of the Swin/ConvNeXt ImageNet files under DINO's file names (none = unset)",
                        none_ok=True),
    "use_checkpoint": _bool("activation checkpointing of the Swin/ConvNeXt blocks (memory for compute)"),
    "backbone_freeze_keywords": Key("list[str]", "freeze backbone parameters whose name contains one of these "
                                    "(Swin/ConvNeXt: body.<timm name>, norm<k>; none = none)", none_ok=True,
                                    length=(1, None)),
    "backbone_freeze_stem": _bool("keep the stem and layer1 frozen (DINO's recipe with ImageNet weights)"),
    "batch_norm_type": _choice("backbone normalisation", "FrozenBatchNorm2d", "BatchNorm2d"),
    "dilation": _bool("dilate the last ResNet stage (DC5)"),
    "return_interm_indices": Key("list[int]", "ResNet stages fed to the encoder (0 = stride 4 ... 3 = stride 32)",
                                 0, 3, length=(1, 4)),
    "position_embedding": _choice("position encoding", "sine", "SineHW"),
    "pe_temperatureH": _float("sine position-encoding temperature along y", 0, low_open=True),
    "pe_temperatureW": _float("sine position-encoding temperature along x", 0, low_open=True),
    # ---- transformer
    "enc_layers": _int("encoder layers", 1),
    "dec_layers": _int("decoder layers", 1),
    "dim_feedforward": _int("FFN hidden width", 1),
    "hidden_dim": _int("transformer width", 1),
    "dropout": _prob("dropout in the transformer"),
    "nheads": _int("attention heads", 1),
    "num_queries": _int("decoder queries (top-k encoder proposals)", 1),
    "num_feature_levels": _int("feature levels (backbone stages + extra stride-2 convs)", 1),
    "enc_n_points": _int("deformable sampling points per head and level, encoder", 1),
    "dec_n_points": _int("deformable sampling points per head and level, decoder", 1),
    "transformer_activation": _choice("FFN activation", "relu", "gelu", "glu"),
    "dec_pred_bbox_embed_share": _bool("one box head for all decoder layers"),
    "dec_pred_class_embed_share": _bool("one class head for all decoder layers"),
    "use_detached_boxes_dec_out": _bool("box outputs from detached references (off = look forward twice)"),
    "two_stage_bbox_embed_share": _bool("encoder proposals share the decoder's box head"),
    "two_stage_class_embed_share": _bool("encoder proposals share the decoder's class head"),
    "embed_init_tgt": _bool("learned content queries (mixed query selection); off = from the encoder"),
    "msda_backend": _choice("deformable attention kernel; 'auto' defers to MSDA_BACKEND, else compiled if it loads",
                            "auto", "compiled", "pytorch"),
    "keep_freed_host_memory": _bool("CPU runs: glibc malloc keeps freed memory (no mmap, no trim), so a step "
                                    "does not page-fault its large tensors in again"),
    # ---- post-processing
    "num_select": _int("detections kept per image (top-k over queries x classes)", 1),
    "nms_iou_threshold": _float("per-class NMS IoU threshold; <= 0: no NMS", high=1.0),
    # ---- matcher and losses
    "aux_loss": _bool("losses on every decoder layer"),
    "set_cost_class": _float("matching cost weight: classification", 0),
    "set_cost_bbox": _float("matching cost weight: L1 box", 0),
    "set_cost_giou": _float("matching cost weight: GIoU", 0),
    "cls_loss_coef": _float("loss weight: focal classification", 0),
    "bbox_loss_coef": _float("loss weight: L1 box", 0),
    "giou_loss_coef": _float("loss weight: GIoU", 0),
    "interm_loss_coef": _float("weight of the encoder-proposal losses", 0),
    "no_interm_box_loss": _bool("drop the box losses of the encoder proposals"),
    "focal_alpha": _prob("focal loss alpha"),
    # ---- contrastive denoising
    "use_dn": _bool("contrastive denoising queries in training"),
    "dn_number": _int("denoising query budget (doubled into positive and negative groups)", 0),
    "dn_scalar": _int("DN-DETR's name for dn_number; when set it replaces dn_number", 0, none_ok=True),
    "dn_box_noise_scale": _float("denoising box noise scale (DINO's scripts: 1.0)", 0),
    "dn_label_noise_ratio": _prob("fraction of denoising labels flipped"),
    "dn_labelbook_size": _int("denoising label embeddings (>= num_classes - 1)", 1),
    "dn_label_coef": _float("loss_ce_dn weight = cls_loss_coef x this", 0),
    "dn_bbox_coef": _float("loss_bbox_dn / loss_giou_dn weights = coef x this", 0),
    # ---- AugDETR
    "use_hae": _bool("AugDETR Hybrid Attention Encoder"),
    "num_hae_layers": _int("hybrid encoder layers (the first N)", 0),
    "hae_dense_level": _int("level index of the dense attention (-1 = coarsest)"),
    "hae_ffn": _bool("an FFN after the dense attention (the earlier reproduction's variant)"),
    "use_emca": _bool("AugDETR Encoder-Mixing Cross-Attention"),
    "emca_enc_layers": Key("list[int]", "encoder layers EMCA mixes (0-based; none = all)", 0, none_ok=True,
                           length=(1, None)),
    "emca_shared_value_proj": _bool("one value projection for all mixed encoder layers (reproduction's variant)"),
    # ---- AlignDETR (loss and matching only; the model stays DINO's)
    "criterion_type": _choice("training loss and matching: DINO's, or AlignDETR's (IA-BCE, one-to-k, rank weights)",
                              "dino", "aligndetr"),
    "aligndetr_alpha": _prob("AlignDETR quality t = p^alpha * IoU^(1-alpha) (not the focal alpha)"),
    "aligndetr_gamma": _float("AlignDETR negatives' factor p^gamma", 0),
    "aligndetr_tau": _float("AlignDETR rank weight exp(-rank / tau)", 0, low_open=True),
    "o2m_k": Key("list[int]", "AlignDETR matches per ground truth: [encoder proposals, decoder layer 1, ..., layer L]",
                 1, length=(2, None)),
}

# Keys of DINO's config files that this project does not implement: accepted only at DINO's
# value (so an official config file loads) and then dropped.
NOT_IMPLEMENTED: Dict[str, Any] = {
    "lr_linear_proj_names": ["reference_points", "sampling_offsets"], "lr_linear_proj_mult": 0.1,
    "ddetr_lr_param": False, "frozen_weights": None, "unic_layers": 0,
    "query_dim": 4, "num_patterns": 0, "pdetr3_bbox_embed_diff_each_layer": False,
    "pdetr3_refHW": -1, "random_refpoints_xy": False, "fix_refpoints_hw": -1,
    "dabdetr_yolo_like_anchor_update": False, "dabdetr_deformable_encoder": False,
    "dabdetr_deformable_decoder": False, "use_deformable_box_attn": False, "box_attn_type": "roi_align",
    "dec_layer_number": None, "decoder_layer_noise": False, "dln_xy_noise": 0.2, "dln_hw_noise": 0.2,
    "add_channel_attention": False, "add_pos_value": False, "two_stage_pat_embed": 0,
    "two_stage_add_query_num": 0, "two_stage_learn_wh": False, "two_stage_default_hw": 0.05,
    "two_stage_keep_all_tokens": False, "masks": False, "mask_loss_coef": 1.0, "dice_loss_coef": 1.0,
    "enc_loss_coef": 1.0, "match_unstable_error": True, "decoder_sa_type": "sa",
    "decoder_module_seq": ["sa", "ca", "ffn"], "param_dict_type": "default", "pre_norm": False,
    "two_stage_type": "standard", "matcher_type": "HungarianMatcher",
}


def _same(value: Any, expected: Any) -> bool:
    """Equal as config values: lists by items, numbers by value (1 == 1.0), bools/None by identity."""
    if isinstance(expected, list):
        return isinstance(value, (list, tuple)) and list(value) == expected
    if expected is None or isinstance(expected, bool):
        return value is expected
    if isinstance(expected, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value == expected
    return value == expected


def check_not_implemented(name: str, value: Any) -> None:
    """ConfigError unless `value` is DINO's value of the not-implemented key `name`."""
    expected = NOT_IMPLEMENTED[name]
    if not _same(value, expected):
        raise ConfigError(f"{name}={value!r} is not implemented here (only DINO's {name}={expected!r} "
                          f"is accepted); remove it from the config or --options")


def check_value(name: str, value: Any) -> Any:
    """The checked value of one key; ConfigError for an unknown key."""
    if name in NOT_IMPLEMENTED:
        check_not_implemented(name, value)
        return value
    if name not in SCHEMA:
        raise ConfigError(f"{name!r} is unknown; `python main.py --print_config` lists every key")
    return SCHEMA[name].check(name, value)


_defaults_cache: Dict[str, Any] = {}


def project_defaults() -> Dict[str, Any]:
    """DINO_4scale.py's values: the defaults of keys a config file does not set."""
    if not _defaults_cache:
        from util.slconfig import SLConfig
        _defaults_cache.update(SLConfig.fromfile(DEFAULTS_FILE).to_dict())
    return dict(_defaults_cache)


def resolve_config(cfg: Dict[str, Any], source: str) -> Dict[str, Any]:
    """Checked, complete config from a loaded one (see the module docstring); `source` names the
    config file in errors."""
    out = {}
    for name, value in cfg.items():
        try:
            checked = check_value(name, value)
        except ConfigError as e:
            raise ConfigError(f"{source}: config key {e}") from None
        if name not in NOT_IMPLEMENTED:
            out[name] = checked
    defaults = project_defaults() if any(k not in out for k in SCHEMA) else {}
    for name in SCHEMA:
        if name not in out:
            if name not in defaults:
                raise ConfigError(f"{DEFAULTS_FILE}: key {name!r} has no default; add `{name} = ...` there")
            out[name] = SCHEMA[name].check(name, defaults[name])
    _check_relations(out, source)
    return out


def _check_relations(cfg: Dict[str, Any], source: str) -> None:
    """Constraints between keys."""
    def fail(message):
        raise ConfigError(f"{source}: {message}")

    if cfg["hidden_dim"] % cfg["nheads"]:
        fail(f"hidden_dim={cfg['hidden_dim']} is not divisible by nheads={cfg['nheads']}; pick sizes that divide")
    if cfg["hidden_dim"] % 2:
        fail(f"hidden_dim={cfg['hidden_dim']} must be even (half of it encodes y, half x)")
    n_stages = len(cfg["return_interm_indices"])
    if cfg["num_feature_levels"] < n_stages:
        fail(f"num_feature_levels={cfg['num_feature_levels']} is below the {n_stages} stages of "
             f"return_interm_indices={cfg['return_interm_indices']}; raise it")
    if cfg["dn_labelbook_size"] < cfg["num_classes"] - 1:
        fail(f"dn_labelbook_size={cfg['dn_labelbook_size']} must be >= num_classes - 1 = {cfg['num_classes'] - 1} "
             f"(class ids index the label embedding); set dn_labelbook_size={cfg['num_classes']}")
    if cfg["use_hae"] and cfg["num_hae_layers"] > cfg["enc_layers"]:
        fail(f"num_hae_layers={cfg['num_hae_layers']} exceeds enc_layers={cfg['enc_layers']}; lower it")
    if not -cfg["num_feature_levels"] <= cfg["hae_dense_level"] < cfg["num_feature_levels"]:
        fail(f"hae_dense_level={cfg['hae_dense_level']} is not a level index for num_feature_levels="
             f"{cfg['num_feature_levels']}; use -1 (coarsest) .. {cfg['num_feature_levels'] - 1}")
    bad = [i for i in cfg["emca_enc_layers"] or [] if i >= cfg["enc_layers"]]
    if bad:
        fail(f"emca_enc_layers={cfg['emca_enc_layers']} names encoder layers {bad} of only {cfg['enc_layers']}; "
             f"use 0 .. {cfg['enc_layers'] - 1}")
    if cfg["criterion_type"] == "aligndetr" and len(cfg["o2m_k"]) != cfg["dec_layers"] + 1:
        fail(f"o2m_k={cfg['o2m_k']} has {len(cfg['o2m_k'])} entries for dec_layers={cfg['dec_layers']}; give "
             f"dec_layers + 1 = {cfg['dec_layers'] + 1} (encoder proposals, then each decoder layer), "
             f"e.g. o2m_k={[2] * cfg['dec_layers'] + [1]}")
    if cfg["dilation"] and cfg["backbone"] in ("resnet18", "resnet34"):
        fail(f"dilation=True needs a bottleneck ResNet (resnet50/resnet101); {cfg['backbone']} has basic blocks, "
             f"which torchvision cannot dilate: set dilation=False")
    lo, hi = cfg["data_aug_scales2_crop"]
    if lo > hi:
        fail(f"data_aug_scales2_crop={cfg['data_aug_scales2_crop']} must be [min, max]; swap them")


def describe(cfg: Dict[str, Any]) -> Sequence[str]:
    """`key = value  # description` lines of a resolved config, in schema order (--print_config)."""
    width = max(len(f"{k} = {cfg[k]!r}") for k in SCHEMA)
    return [f"{f'{k} = {cfg[k]!r}':<{width}}  # {SCHEMA[k].help}" for k in SCHEMA]


def load_config(path: str, options: Optional[Dict[str, Any]] = None, flags: Optional[Dict[str, Any]] = None,
                run_only: Sequence[str] = ()) -> Dict[str, Any]:
    """The checked config of file `path` with `--options` (parsed values) and config-key command-line
    flags (`flags`, which win) applied. `run_only` names command-line options that are not config keys:
    setting one in the file or in --options is an error saying to pass the flag."""
    from util.slconfig import SLConfig
    raw = SLConfig.fromfile(path).to_dict()
    for key in raw:
        if key in run_only:
            raise ConfigError(f"{path}: key {key!r} is a command-line option only; remove it from the config "
                              f"and pass --{key}")
    for key, value in (options or {}).items():
        if key in run_only:
            raise ConfigError(f"{key!r} is a command-line option, not a config key: pass --{key} instead of "
                              f"--options {key}=...")
        if key not in SCHEMA and key not in NOT_IMPLEMENTED:
            close = difflib.get_close_matches(key, list(SCHEMA), n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(map(repr, close))}?" if close else "--print_config lists every key"
            raise ConfigError(f"unknown config key {key!r} in --options; {hint}")
        try:
            raw[key] = check_value(key, value)
        except ConfigError as e:
            raise ConfigError(f"--options {e}") from None
    raw.update(flags or {})
    cfg = resolve_config(raw, path)
    if cfg["dn_scalar"] is not None:
        cfg["dn_number"] = cfg["dn_scalar"]  # DN-DETR's name for the denoising query budget
    return cfg


def _model_keys() -> List[str]:
    """Keys that change the model's tensors (backbone .. embed_init_tgt in SCHEMA, classes, AugDETR)."""
    names = list(SCHEMA)
    block = names[names.index("modelname"):names.index("msda_backend")]
    return block + ["num_classes", "dn_labelbook_size"] + [n for n in names if n.startswith(("hae_", "emca_"))] + [
        "use_hae", "num_hae_layers", "use_emca"]


def config_differences(saved: Dict[str, Any], current: Dict[str, Any]) -> List[Tuple[str, Any, Any]]:
    """(key, saved value, current value) for the config keys whose values differ: keys that change
    the model's tensors first, then the others, each in schema order; keys the saved config lacks
    (older files) are not compared."""
    model = _model_keys()
    order = model + [k for k in SCHEMA if k not in model]
    return [(k, saved[k], current[k]) for k in order
            if k in saved and k in current and not _same(current[k], saved[k])]
