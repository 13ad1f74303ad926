"""What the learner sees: a grid of a few replay-buffer frames next to their two augmented views.

For the metrics sinks that show pictures (TensorBoard): one row per frame, the frame (resized to
the model's input), view 1 and view 2 (of the frame's temporal partner when the buffer pairs
frames in time), drawn by the learner's own `View`s. Frames and views come from generators seeded
by the step, never from the trainer's sampler or the learner's view generator, so making a grid
leaves the training run exactly as it would have been without it.
"""

from __future__ import annotations

import copy
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

from trainer.augment import View
from trainer.buffer import ReplayBuffer
from trainer.byol import BYOL


@torch.no_grad()
def view_grid(
    learner: BYOL,
    buffer: ReplayBuffer,
    to_input: Callable[[torch.Tensor], torch.Tensor],
    frames: int,
    seed: int,
) -> Optional[np.ndarray]:
    """(H, W, 3) uint8 RGB grid of `frames` buffer frames × (frame, view 1, view 2); None when the buffer
    is empty or the learner's augmentations are not `View`s. `to_input`: uint8 NHWC → float NCHW in
    [0, 1] on the learner's device (`TrainStep.to_input`)."""
    if len(buffer) == 0 or not isinstance(learner.augment1, View) or not isinstance(learner.augment2, View):
        return None
    images, partners = buffer.sample(min(frames, len(buffer)), torch.Generator().manual_seed(seed))
    x = to_input(images).contiguous()
    x2 = to_input(partners).contiguous() if partners is not None else x
    generator = torch.Generator(device=x.device).manual_seed(seed)
    columns = [
        F.interpolate(
            x,
            size=(learner.augment1.height, learner.augment1.width),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
    ]
    for view, source in ((learner.augment1, x), (learner.augment2, x2)):
        mine = copy.copy(view)  # the learner's view with a generator of its own
        mine.generator = generator
        mean = torch.tensor(view.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(view.std, device=x.device).view(1, -1, 1, 1)
        columns.append(mine.apply(source).float().contiguous() * std + mean)
    rows = torch.stack(columns, dim=1).flatten(0, 1).clamp_(0, 1)  # frame 0's three, then frame 1's, ...
    grid = make_grid(rows, nrow=len(columns), padding=2, pad_value=1.0)
    return (grid.permute(1, 2, 0) * 255).round().to(torch.uint8).cpu().numpy()
