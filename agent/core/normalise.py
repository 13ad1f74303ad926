"""Encoder input statistics and uint8 -> float conversion, numpy side: the one owner in the kernel.

Every frame an encoder sees is uint8 (0-255) turned into float by x / 255 and then (x - mean) / std
per channel. The constants live here; `trainer.normalise` is the torch twin the learner and export
use, built on these same numbers and formulas. Sources of the numbers: ImageNet's per-channel RGB
mean and std as torchvision's transforms documentation and timm's `timm/data/constants.py`
(`IMAGENET_DEFAULT_MEAN` / `IMAGENET_DEFAULT_STD`) give them; MONO_* is their channel average
(for one-channel, gray encoders).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)
MONO_MEAN: tuple[float, ...] = (0.449,)  # mean of IMAGENET_MEAN, rounded
MONO_STD: tuple[float, ...] = (0.226,)  # mean of IMAGENET_STD, rounded
PIXEL_MAX = 255.0
"""Full scale of a uint8 sample: x / PIXEL_MAX puts frames in [0, 1]."""


def to_unit_float(frames: np.ndarray) -> np.ndarray:
    """uint8 array of any shape -> float32 in [0, 1] (x / 255), same shape."""
    return frames.astype(np.float32) / PIXEL_MAX


def folded_scale_shift(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift), float32 of shape (C,), with x * scale + shift == (x / 255 - mean) / std for uint8 x:
    scale = 1 / (255 std), shift = -mean / std (one multiply-add instead of three ops)."""
    mean_a = np.asarray(mean, dtype=np.float32)
    std_a = np.asarray(std, dtype=np.float32)
    return np.float32(1.0) / (np.float32(PIXEL_MAX) * std_a), -mean_a / std_a


def normalise_nchw(frames: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 NHWC (RGB or gray: one mean/std per channel) → float32 NCHW, x/255 then (x - mean)/std: the input
    of a `float_nchw` export."""
    scale, shift = folded_scale_shift(mean, std)
    out = frames.astype(np.float32) * scale + shift
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))
