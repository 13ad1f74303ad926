"""Learning-rate warm-up as a plain function of the step, so a resumed run needs no scheduler state.

BYOL (arXiv 2006.07733, sec. 3.2) warms the learning rate up linearly over its first 10 epochs
(after Goyal et al. 2017, "Accurate, Large Minibatch SGD"): the randomly initialised heads and the
target produce large, noisy gradients in the first steps, and a full-size step then can throw the
encoder far from its initialisation. A continual run has no end to decay towards, so after the
warm-up the rate stays constant.
"""

from __future__ import annotations

import torch


def lr_at(step: int, base: float, warmup_steps: int) -> float:
    """Learning rate for the update number `step` (0-based): base * (step + 1) / warmup_steps, then base."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return base
    return base * (step + 1) / warmup_steps


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate (the groups differ in weight decay only)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
