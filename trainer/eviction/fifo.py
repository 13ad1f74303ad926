"""FIFO eviction: the oldest frame goes, so the buffer is the most recent stretch of the stream."""

from __future__ import annotations

from typing import Optional

from trainer.eviction.base import EvictionPolicy, Slots
from trainer.eviction.registry import register_policy


@register_policy
class FifoPolicy(EvictionPolicy):
    """Evict the oldest frame: the buffer is the most recent stretch of the stream."""

    name = "fifo"

    def victim(self, slots: Slots, frames_seen: int) -> Optional[int]:
        return slots.oldest()
