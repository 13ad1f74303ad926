"""What every eviction policy is: the per-slot bookkeeping it reads (`Slots`) and the interface the buffer calls.

A policy names the slot a new frame replaces once the buffer is full (or declines the frame). The
buffer asks the policy what it needs, never its type: `needs_embeddings` says whether the trainer
should embed stored frames for it (`to_embed` / `set_embeddings`), `stats` adds its own counters,
and `state_for` / `reorder_state` save and restore its per-slot state with the buffer's frames.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch


class Slots:
    """Per-slot bookkeeping the policies read (numpy arrays indexed by slot)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = 0  # slots ever filled; they fill 0..capacity-1 in order, then get replaced
        self.valid = np.zeros(capacity, dtype=bool)  # False while empty or being overwritten
        self.camera_id = np.zeros(capacity, dtype=np.int64)
        self.seq = np.zeros(capacity, dtype=np.int64)
        self.timestamp = np.zeros(capacity, dtype=np.float64)
        self.inserted_at = np.zeros(capacity, dtype=np.float64)  # time.monotonic() at insert
        self.ticket = np.full(capacity, -1, dtype=np.int64)  # insert counter: identifies the frame in a slot

    def oldest(self) -> int:
        """Slot holding the earliest inserted frame among those not being written."""
        order = np.where(self.valid[: self.size], self.ticket[: self.size], np.iinfo(np.int64).max)
        return int(order.argmin())


class EvictionPolicy:
    """Decides which slot a new frame replaces once the buffer is full, or that the frame is dropped.

    Built by the registry as `cls(capacity, seed)`; `name` is its `buffer.policy` value.
    """

    name = "base"
    needs_embeddings = False
    """True when the policy compares frames by their embeddings: the trainer then embeds stored
    frames (`to_embed`) with the target encoder and hands the vectors back (`set_embeddings`)."""

    def __init__(self, capacity: int, seed: int) -> None:
        self.capacity = capacity

    def victim(self, slots: Slots, frames_seen: int) -> Optional[int]:
        """The slot the next frame replaces (the buffer is full), or None to drop that frame."""
        raise NotImplementedError

    def forget(self, slot: int) -> None:
        """The frame in `slot` is being replaced."""

    def to_embed(self, slots: Slots, n: int, refresh: bool) -> np.ndarray:
        """Up to `n` slots (int64) whose frames the policy wants embedded: not yet embedded ones, or with
        `refresh` the stalest embedded ones. Empty for a policy without `needs_embeddings`."""
        return np.zeros(0, dtype=np.int64)

    def set_embeddings(self, slot_ids: torch.Tensor, vectors: torch.Tensor) -> None:
        """Record (len(slot_ids), D) embeddings of the frames in `slot_ids`; ignored unless `needs_embeddings`."""

    def stats(self) -> dict[str, Any]:
        """The policy's own counters, merged into the buffer's stats."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""

    def state_for(self, keep: np.ndarray) -> dict[str, Any]:
        """`state_dict` with per-slot state restricted to the saved slots `keep` (in saved order)."""
        return self.state_dict()

    @staticmethod
    def reorder_state(state: dict[str, Any], order: torch.Tensor) -> dict[str, Any]:
        """A saved state (from `state_for`) with per-slot state put in the slot order `order` (a resumed buffer's)."""
        return state
