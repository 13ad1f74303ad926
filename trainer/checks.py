"""Input checks shared by the learner and its views, so bad input fails at the door with one line.

Without them a wrong shape or dtype surfaces as a traceback from deep inside a convolution or
`grid_sample`, which names neither the argument nor the fix.
"""

from __future__ import annotations

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
        raise LearnerError(
            f"{name} must have {channels} channels (RGB); got shape {tuple(images.shape)} "
            "(pass augment_fn for other inputs)"
        )
