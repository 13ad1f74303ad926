"""uint8 frames -> the encoder's float input, torch side: the one owner for the learner and export.

The constants and formulas are the kernel's (`agent.core.normalise`, which cites their source); this
module only puts them on tensors: `to_unit_nchw` (uint8 NHWC -> float NCHW in [0, 1]),
`channel_stats` / `normalise` ((x - mean) / std) and `folded_scale_shift` (both in one multiply-add,
as an exported graph does it).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from agent.core.normalise import IMAGENET_MEAN, IMAGENET_STD, MONO_MEAN, MONO_STD, PIXEL_MAX
from agent.core.normalise import folded_scale_shift as _folded_np

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MONO_MEAN",
    "MONO_STD",
    "PIXEL_MAX",
    "channel_stats",
    "folded_scale_shift",
    "normalise",
    "to_unit_nchw",
]


def to_unit_nchw(frames: Tensor, device: Optional[torch.device] = None, non_blocking: bool = False) -> Tensor:
    """uint8 (N, H, W, C) frames -> float32 (N, C, H, W) in [0, 1] (x / 255), on `device` when given.

    A permuted view, so its memory is channels_last (call `.contiguous()` for NCHW memory).
    """
    if device is not None:
        frames = frames.to(device, non_blocking=non_blocking)
    return frames.permute(0, 3, 1, 2).float().div_(PIXEL_MAX)


def channel_stats(
    mean: Sequence[float], std: Sequence[float], device: Optional[torch.device] = None
) -> tuple[Tensor, Tensor]:
    """mean and std as float32 (1, C, 1, 1) tensors on `device`, ready to broadcast over NCHW."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return mean_t, std_t


def normalise(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(x - mean) / std per channel for float (N, C, H, W) `x` in [0, 1]; same shape, x's device."""
    mean_t, std_t = channel_stats(mean, std, x.device)
    return (x - mean_t) / std_t


def folded_scale_shift(mean: Sequence[float], std: Sequence[float]) -> tuple[Tensor, Tensor]:
    """(scale, shift) as float32 (1, C, 1, 1) tensors: uint8 x * scale + shift == (x / 255 - mean) / std."""
    scale, shift = _folded_np(mean, std)
    return torch.from_numpy(scale).view(1, -1, 1, 1), torch.from_numpy(shift).view(1, -1, 1, 1)
