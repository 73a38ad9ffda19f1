"""Small tensor helpers shared by the models, the data pipeline and the engine.

`NestedTensor` is DETR's padded-batch container: images of different sizes are
padded to the largest height and width in the batch, and `mask` marks the
padding (True = padded pixel).
"""
from typing import List, Optional, Sequence

import torch
from torch import Tensor


class NestedTensor:
    """A batch of images padded to one size, with its padding mask.

    tensors: (B, C, H, W); mask: (B, H, W) bool, True where the pixel is padding.
    """

    def __init__(self, tensors: Tensor, mask: Optional[Tensor]):
        self.tensors = tensors
        self.mask = mask

    def to(self, device, non_blocking: bool = False) -> "NestedTensor":
        mask = self.mask.to(device, non_blocking=non_blocking) if self.mask is not None else None
        return NestedTensor(self.tensors.to(device, non_blocking=non_blocking), mask)

    def decompose(self):
        return self.tensors, self.mask

    @property
    def shape(self):
        return self.tensors.shape

    def __repr__(self) -> str:
        mask = None if self.mask is None else tuple(self.mask.shape)
        return f"NestedTensor(tensors={tuple(self.tensors.shape)}, mask={mask})"


def nested_tensor_from_tensor_list(tensor_list: Sequence[Tensor]) -> NestedTensor:
    """Pad a list of (C, H_i, W_i) images to (B, C, max H, max W) with a padding mask."""
    if tensor_list[0].ndim != 3:
        raise ValueError(f"expected (C, H, W) images, got a tensor with shape {tuple(tensor_list[0].shape)}")
    channels = tensor_list[0].shape[0]
    max_h = max(int(img.shape[1]) for img in tensor_list)
    max_w = max(int(img.shape[2]) for img in tensor_list)
    first = tensor_list[0]
    tensors = first.new_zeros((len(tensor_list), channels, max_h, max_w))
    mask = torch.ones((len(tensor_list), max_h, max_w), dtype=torch.bool, device=first.device)
    for img, pad_img, m in zip(tensor_list, tensors, mask):
        pad_img[:, : img.shape[1], : img.shape[2]].copy_(img)
        m[: img.shape[1], : img.shape[2]] = False
    return NestedTensor(tensors, mask)


def to_nested_tensor(samples) -> NestedTensor:
    """Accept a NestedTensor, a list of (C,H,W) images, or a (B,C,H,W) tensor."""
    if isinstance(samples, NestedTensor):
        return samples
    if isinstance(samples, Tensor) and samples.ndim == 4:
        mask = torch.zeros(samples.shape[0], *samples.shape[2:], dtype=torch.bool, device=samples.device)
        return NestedTensor(samples, mask)
    return nested_tensor_from_tensor_list(list(samples))


def collate_fn(batch: List):
    """DataLoader collate: [(image, target), ...] -> (NestedTensor, tuple of targets)."""
    images, targets = zip(*batch)
    return nested_tensor_from_tensor_list(images), targets
