"""Input checks shared by the learner and its views, so bad input fails at the door with one line.

Without them a wrong shape or dtype surfaces as a traceback from deep inside a convolution or
`grid_sample`, which names neither the argument nor the fix.
"""

from __future__ import annotations

import math
from typing import Union

import torch

from agent.core.errors import ByolAgentError


class LearnerError(ByolAgentError, ValueError):
    """The learner was given input it cannot use (wrong shape or dtype, too small a batch, a bad mode)."""


def check_images(images: object, name: str = "images", channels: int | None = None) -> None:
    """Raise LearnerError unless `images` is a non-empty float (N, C, H, W) tensor (C == channels if given)."""
    if not isinstance(images, torch.Tensor):
        raise LearnerError(f"{name} must be a torch.Tensor shaped (N, C, H, W); got {type(images).__name__}")
    if images.ndim != 4:
        raise LearnerError(f"{name} must be a batch shaped (N, C, H, W); got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise LearnerError(
            f"{name} must be float in [0, 1]; got {images.dtype} (convert uint8 frames with images.float() / 255)"
        )
    if images.shape[0] == 0 or images.shape[2] < 2 or images.shape[3] < 2:
        raise LearnerError(f"{name} is empty or degenerate: shape {tuple(images.shape)}")
    if channels is not None and images.shape[1] != channels:
        kind = " (RGB)" if channels == 3 else ""
        raise LearnerError(
            f"{name} must have {channels} channel{'s' if channels != 1 else ''}{kind}; got shape {tuple(images.shape)} "
            "(build BYOL with channels= matching your images, or pass augment_fn for other inputs)"
        )


def check_range(images: torch.Tensor, name: str = "images") -> None:
    """Raise LearnerError unless every value of the float tensor `images` lies in [0, 1].

    The views' colour ops and solarize assume [0, 1]: images left in 0-255 (a forgotten `/ 255`)
    would train silently on views whose pixels mostly clip to 1. One `torch.aminmax` over the
    tensor (on CUDA that reads two numbers back, one device sync). NaN or inf fail too.
    """
    low, high = (float(v) for v in torch.aminmax(images.detach()))
    if low >= 0.0 and high <= 1.0:
        return
    if not math.isfinite(low) or not math.isfinite(high):
        hint = "non-finite pixels: check the frames and their preprocessing"
    elif high > 1.5:
        hint = "frames in 0-255? convert them with images.float() / 255"
    else:
        hint = "clamp them with images.clamp(0, 1), or pass augment_fn for other inputs"
    raise LearnerError(f"{name} must be float in [0, 1]; got values from {low:.6g} to {high:.6g} ({hint})")


ImageSize = Union[int, tuple[int, int]]


def image_hw(image_size: object) -> tuple[int, int]:
    """(height, width) of an `image_size` given as one side (square) or a (height, width) pair, in px.

    Raises LearnerError unless each side is an int >= 2 (a bool or a float is not a side).
    """
    sides = tuple(image_size) if isinstance(image_size, (tuple, list)) else (image_size, image_size)
    if len(sides) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 2 for s in sides):
        raise LearnerError(f"image_size must be an int >= 2 or a (height, width) pair of them; got {image_size!r}")
    return sides[0], sides[1]
