"""Reservoir eviction (Vitter's algorithm R): every frame seen so far is kept with equal probability."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from trainer.eviction.base import EvictionPolicy, Slots
from trainer.eviction.registry import register_policy


@register_policy
class ReservoirPolicy(EvictionPolicy):
    """Keep a uniform sample of everything seen (Vitter's algorithm R): frame n enters with p = C/n."""

    name = "reservoir"

    def __init__(self, capacity: int, seed: int) -> None:
        super().__init__(capacity, seed)
        self._rng = np.random.default_rng(seed)

    def victim(self, slots: Slots, frames_seen: int) -> Optional[int]:
        j = int(self._rng.integers(0, max(frames_seen, 1)))
        if j >= slots.capacity or not slots.valid[j]:
            return None
        return j

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "rng" in state:
            self._rng.bit_generator.state = state["rng"]
