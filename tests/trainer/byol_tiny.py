"""A tiny real BYOL learner and random image batches for the learner's tests (tests/trainer/test_byol*.py)."""

from __future__ import annotations

import torch

from trainer import BYOL
from trainer.encoders import TinyCNN

HEADS = dict(projection_size=16, projection_hidden_size=32)


def tiny_learner(seed: int = 0, **kwargs) -> BYOL:
    torch.manual_seed(seed)
    return BYOL(TinyCNN(width=8), image_size=16, **{"hidden_layer": "avgpool", **HEADS, **kwargs})


def batch(n: int = 6, size: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def train_step(learner: BYOL, opt: torch.optim.Optimizer, images: torch.Tensor) -> float:
    loss = learner(images)
    opt.zero_grad()
    loss.backward()
    opt.step()
    learner.update_moving_average()
    return loss.item()
