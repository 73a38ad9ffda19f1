"""Every backbone this project builds, listed once: family, stage channels, ImageNet weights.

The config schema takes its `backbone` choices from BACKBONES, the builder picks the family's
module from it, and the weights loader reads the ImageNet file name from it. Names are DINO's.
Stages 0..3 have strides 4, 8, 16, 32 (`return_interm_indices` index them).
"""
from dataclasses import dataclass, field, replace
from typing import Dict, Tuple

STAGE_STRIDES = (4, 8, 16, 32)


@dataclass(frozen=True)
class BackboneSpec:
    """family: 'resnet' (torchvision) | 'swin' | 'convnext' (timm); channels: output channels of
    stages 0..3; imagenet: the ImageNet weights the backbone starts from (ResNet: torchvision's
    weights name, resolved through torch.hub's cache; Swin/ConvNeXt: the original release's file
    name, read from backbone_dir); timm_variant / timm_kwargs: the timm model (architecture only,
    nothing is downloaded); dilatable: the last stage can be dilated (DC5: bottleneck ResNets)."""
    family: str
    channels: Tuple[int, int, int, int]
    imagenet: str
    timm_variant: str = ""
    timm_kwargs: Dict = field(default_factory=dict)
    dilatable: bool = False

    def stage_channels(self, indices) -> list:
        return [self.channels[i] for i in indices]

    def resized(self, **timm_kwargs) -> "BackboneSpec":
        """The same timm backbone at other constructor values (e.g. a tiny width in tests)."""
        kwargs = dict(self.timm_kwargs, **timm_kwargs)
        if self.family == "swin":
            channels = tuple(kwargs["embed_dim"] * 2 ** i for i in range(4))
        elif self.family == "convnext":
            channels = tuple(kwargs["dims"])
        else:
            raise ValueError(f"{self.family} backbones have no timm constructor values")
        return replace(self, channels=channels, timm_kwargs=kwargs)


def _resnet(channels, weights, dilatable):
    return BackboneSpec("resnet", channels, weights, dilatable=dilatable)


def _swin(variant, embed_dim, depths, heads, window, img, file):
    return BackboneSpec("swin", tuple(embed_dim * 2 ** i for i in range(4)), file, variant,
                        dict(embed_dim=embed_dim, depths=depths, num_heads=heads, window_size=window, img_size=img))


def _convnext(variant, depths, dims, file):
    return BackboneSpec("convnext", tuple(dims), file, variant, dict(depths=depths, dims=dims))


BASIC = (64, 128, 256, 512)  # ResNet-18/34 (basic blocks)
BOTTLENECK = (256, 512, 1024, 2048)  # ResNet-50/101
# DINO's names and values (models/dino/swin_transformer.py, convnext.py); Swin-S and the smaller
# ConvNeXts are not in DINO, named the same way, with the file names the original releases use.
BACKBONES: Dict[str, BackboneSpec] = {
    "resnet18": _resnet(BASIC, "IMAGENET1K_V1", False),
    "resnet34": _resnet(BASIC, "IMAGENET1K_V1", False),
    "resnet50": _resnet(BOTTLENECK, "IMAGENET1K_V1", True),
    "resnet101": _resnet(BOTTLENECK, "IMAGENET1K_V1", True),
    "swin_T_224_1k": _swin("swin_tiny_patch4_window7_224", 96, (2, 2, 6, 2), (3, 6, 12, 24), 7, 224,
                           "swin_tiny_patch4_window7_224.pth"),
    "swin_S_224_1k": _swin("swin_small_patch4_window7_224", 96, (2, 2, 18, 2), (3, 6, 12, 24), 7, 224,
                           "swin_small_patch4_window7_224.pth"),
    "swin_B_224_22k": _swin("swin_base_patch4_window7_224", 128, (2, 2, 18, 2), (4, 8, 16, 32), 7, 224,
                            "swin_base_patch4_window7_224_22k.pth"),
    "swin_B_384_22k": _swin("swin_base_patch4_window12_384", 128, (2, 2, 18, 2), (4, 8, 16, 32), 12, 384,
                            "swin_base_patch4_window12_384.pth"),
    "swin_L_224_22k": _swin("swin_large_patch4_window7_224", 192, (2, 2, 18, 2), (6, 12, 24, 48), 7, 224,
                            "swin_large_patch4_window7_224_22k.pth"),
    "swin_L_384_22k": _swin("swin_large_patch4_window12_384", 192, (2, 2, 18, 2), (6, 12, 24, 48), 12, 384,
                            "swin_large_patch4_window12_384_22k.pth"),
    "convnext_tiny_1k": _convnext("convnext_tiny", (3, 3, 9, 3), (96, 192, 384, 768), "convnext_tiny_1k_224_ema.pth"),
    "convnext_small_1k": _convnext("convnext_small", (3, 3, 27, 3), (96, 192, 384, 768),
                                   "convnext_small_1k_224_ema.pth"),
    "convnext_base_22k": _convnext("convnext_base", (3, 3, 27, 3), (128, 256, 512, 1024),
                                   "convnext_base_22k_224.pth"),
    "convnext_large_22k": _convnext("convnext_large", (3, 3, 27, 3), (192, 384, 768, 1536),
                                    "convnext_large_22k_224.pth"),
    "convnext_xlarge_22k": _convnext("convnext_xlarge", (3, 3, 27, 3), (256, 512, 1024, 2048),
                                     "convnext_xlarge_22k_224.pth"),
}


def backbone_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ValueError(f"backbone={name!r} is not one of {sorted(BACKBONES)}")
    return BACKBONES[name]
