"""The model keys every detector reads: which detector, classes, backbone, transformer sizes, matching
costs, loss weights and post-processing. Detector families add their own groups (see models/registry.py)."""
from typing import Sequence

from util.config_schema import Key, KeyGroup, bool_key, choice_key, float_key, int_key, prob_key

from .backbones.table import BACKBONES


def _width_divides(cfg):
    if cfg["hidden_dim"] % cfg["nheads"]:
        return f"hidden_dim={cfg['hidden_dim']} is not divisible by nheads={cfg['nheads']}; pick sizes that divide"
    if cfg["hidden_dim"] % 2:
        return f"hidden_dim={cfg['hidden_dim']} must be even (half of it encodes y, half x)"
    return None


def _dilation_fits(cfg):
    if cfg["dilation"] and not BACKBONES[cfg["backbone"]].dilatable:
        return (f"dilation=True needs a bottleneck ResNet (resnet50/resnet101); {cfg['backbone']} cannot be "
                f"dilated: set dilation=False")
    return None


def model_keys(detectors: Sequence[str]) -> KeyGroup:
    """The common model group; `detectors` are the registered names `modelname` may take."""
    return KeyGroup("model", "model (every detector)", {
        "modelname": choice_key("detector (models/registry.py)", *detectors, model=True),
        "num_classes": int_key("classification outputs: max category id + 1 (labels are raw category ids)", 1,
                               model=True),
        "backbone": choice_key("torchvision ResNet, or Swin / ConvNeXt built with timm (DINO's names)", *BACKBONES,
                               model=True),
        "backbone_weights": Key("str", "ImageNet weights: a torchvision weights name (e.g. IMAGENET1K_V1, through "
                                "the torch hub cache), a .pth path, or none = random init; Swin/ConvNeXt: a .pth "
                                "path, none, or a name = DINO's file in backbone_dir", none_ok=True),
        "backbone_dir": Key("str", "folder of the Swin/ConvNeXt ImageNet files under DINO's file names (none = "
                            "unset)", none_ok=True),
        "use_checkpoint": bool_key("activation checkpointing of the Swin/ConvNeXt blocks (memory for compute)"),
        "backbone_freeze_keywords": Key("list[str]", "freeze backbone parameters whose name contains one of these "
                                        "(Swin/ConvNeXt: body.<timm name>, norm<k>; none = none)", none_ok=True,
                                        length=(1, None)),
        "backbone_freeze_stem": bool_key("keep the stem and layer1 frozen (DINO's recipe with ImageNet weights)"),
        "batch_norm_type": choice_key("backbone normalisation", "FrozenBatchNorm2d", "BatchNorm2d", model=True),
        "dilation": bool_key("dilate the last ResNet stage (DC5)", model=True),
        "return_interm_indices": Key("list[int]", "backbone stages fed to the encoder (0 = stride 4 ... 3 = stride "
                                     "32)", 0, 3, length=(1, 4), model=True),
        "position_embedding": choice_key("position encoding: DINO's two names of its sine encoding (the same "
                                         "one)", "sine", "SineHW"),
        "pe_temperatureH": float_key("sine position-encoding temperature along y", 0, low_open=True, model=True),
        "pe_temperatureW": float_key("sine position-encoding temperature along x", 0, low_open=True, model=True),
        "pe_offset": float_key("sine position encoding: added to the valid-pixel count before normalising (DINO, "
                               "DETR: 0; Deformable DETR: -0.5, pixel centres)", -1.0, 0.0, model=True),
        "enc_layers": int_key("encoder layers", 1, model=True),
        "dec_layers": int_key("decoder layers", 1, model=True),
        "dim_feedforward": int_key("FFN hidden width", 1, model=True),
        "hidden_dim": int_key("transformer width", 1, model=True),
        "dropout": prob_key("dropout in the transformer"),
        "nheads": int_key("attention heads", 1, model=True),
        "num_queries": int_key("decoder queries", 1, model=True),
        "transformer_activation": choice_key("FFN activation", "relu", "gelu", "glu", model=True),
        "num_select": int_key("detections kept per image (top-k over queries x classes)", 1),
        "nms_iou_threshold": float_key("per-class NMS IoU threshold; <= 0: no NMS", high=1.0),
        "aux_loss": bool_key("losses on every decoder layer"),
        "set_cost_class": float_key("matching cost weight: classification", 0),
        "set_cost_bbox": float_key("matching cost weight: L1 box", 0),
        "set_cost_giou": float_key("matching cost weight: GIoU", 0),
        "cls_loss_coef": float_key("loss weight: classification", 0),
        "bbox_loss_coef": float_key("loss weight: L1 box", 0),
        "giou_loss_coef": float_key("loss weight: GIoU", 0),
    }, relations=(_width_divides, _dilation_fits))
