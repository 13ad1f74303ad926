"""The target's exponential moving average and its tau schedule, as plain functions.

The EMA is one fused in-place `torch._foreach_lerp_` over all tensors (a peer measured a Python
loop over parameters at 47.6 s vs 4.07 s foreach over 3,178 steps).

Schedules: `constant` (tau = base); `cosine` from base to final over total_steps (BYOL's
0.996 -> 1; a cosine ending at 1.0 freezes the target, so it suits bounded runs only);
`warmup_constant` ramps base -> final over warmup_steps on a half cosine, then holds final forever,
for unbounded continual runs.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from agent.core.errors import ConfigError

SCHEDULES = ("constant", "cosine", "warmup_constant")


def check_schedule(schedule: str, base: float, final: float, warmup_steps: int, total_steps: Optional[int]) -> None:
    """Raise ConfigError naming the bad argument, so a schedule fails at construction, not at step 10,000."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown tau_schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")
    for name, value in (("moving_average_decay (tau base)", base), ("tau_final", final)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must be in [0, 1]; got {value}")
    if warmup_steps < 0:
        raise ConfigError(f"tau_warmup_steps must be >= 0; got {warmup_steps}")
    if schedule == "cosine" and (total_steps is None or total_steps < 1):
        raise ConfigError("tau_schedule 'cosine' needs total_steps >= 1 (use 'warmup_constant' for unbounded runs)")


def tau_at(step: int, schedule: str, base: float, final: float, warmup_steps: int, total_steps: Optional[int]) -> float:
    """tau for the EMA update number `step` (0-based); ConfigError for an invalid schedule."""
    check_schedule(schedule, base, final, warmup_steps, total_steps)
    if schedule == "constant":
        return base
    if schedule == "cosine":
        assert total_steps is not None  # check_schedule refuses a cosine schedule without total_steps
        progress = min(step, total_steps) / total_steps
    else:
        progress = min(step, warmup_steps) / warmup_steps if warmup_steps > 0 else 1.0
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def ema_update(target: Sequence[Tensor], online: Sequence[Tensor], tau: float) -> None:
    """target <- tau * target + (1 - tau) * online, in place, for all tensors in one fused call."""
    torch._foreach_lerp_(list(target), list(online), 1.0 - tau)
