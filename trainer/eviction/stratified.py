"""Stratified eviction: the stream is cut into stretches of arrival (strata) and every stretch keeps an equal share.

A robot that moves from room to room streams one room for a while, then the next. FIFO keeps only the last
room; reservoir keeps every past frame with equal probability but admits a new frame only with probability
C/n, so late in a long run the room it is in barely enters the buffer. Stratified eviction always admits
the new frame and evicts a random frame of the most populated stratum: past stretches keep equal shares
(as class-balanced reservoir sampling keeps classes balanced, Chrysakis & Moens, ICML 2020, with arrival
stretches standing in for the labels a robot does not have) and the current one grows to its share at once.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from trainer.eviction.base import EvictionPolicy, Slots
from trainer.eviction.registry import register_policy

STRATA_PER_BUFFER = 4  # a stratum is capacity / 4 consecutive frames: a stretch the buffer could hold 4 times over


@register_policy
class StratifiedPolicy(EvictionPolicy):
    """Evict a random frame of the arrival stratum (`capacity // 4` consecutive frames) holding the most slots.

    The new frame counts in its own stratum; ties are broken at random. Cost: one pass over the
    slots per eviction (O(capacity) numpy work)."""

    name = "stratified"

    def __init__(self, capacity: int, seed: int) -> None:
        super().__init__(capacity, seed)
        self.stratum_frames = max(1, capacity // STRATA_PER_BUFFER)
        self._rng = np.random.default_rng(seed)

    def victim(self, slots: Slots, frames_seen: int) -> Optional[int]:
        live = np.flatnonzero(slots.valid[: slots.size])
        if live.size == 0:
            return None
        strata = (slots.ticket[live] - 1) // self.stratum_frames
        newest = (frames_seen - 1) // self.stratum_frames
        counts = np.bincount(strata, minlength=newest + 1)
        counts[newest] += 1  # the arriving frame
        largest = np.flatnonzero(counts == counts.max())
        crowded = int(largest[self._rng.integers(0, largest.size)])  # ties: any of them (none favoured by age)
        members = live[strata == crowded]
        if members.size == 0:  # only the arriving frame is in the largest stratum (a buffer of 1 live slot)
            return int(live[0])
        return int(members[self._rng.integers(0, members.size)])

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "rng" in state:
            self._rng.bit_generator.state = state["rng"]
