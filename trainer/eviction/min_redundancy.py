"""Minimum-redundancy eviction: the frame most similar (cosine, in the target encoder's embedding space) to
its nearest stored neighbour goes, so a robot standing still does not fill the buffer with one view;
embeddings are refreshed as the encoder moves (`buffer.refresh_every_steps`).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from trainer.eviction.base import EvictionPolicy, Slots
from trainer.eviction.registry import register_policy


@register_policy
class MinRedundancyPolicy(EvictionPolicy):
    """Evict the frame most similar (cosine) to its nearest neighbour in the target's embedding space.

    Embeddings arrive from the trainer in batches (`set_embeddings`); each slot's nearest neighbour
    is maintained incrementally, so an eviction costs one argmax plus re-scoring the few slots whose
    neighbour just left, not an N x N similarity matrix. Frames not yet embedded are never chosen
    while at least two embedded ones exist and they are not outnumbered by the unembedded backlog
    (they get a chance to prove they are novel); before that, or while the backlog is larger than
    the embedded set (frames arriving faster than the trainer embeds them), the policy evicts the
    oldest frame not yet embedded, so the embedded set is never emptied by a fast camera.

    The encoder keeps changing, so an embedding computed on arrival goes stale: two frames the
    early encoder could not tell apart may be far apart now. `stalest(n)` names the embedded slots
    whose embeddings are oldest (by embedding round), which the trainer re-embeds with the current
    target at a bounded rate (`buffer.refresh_every_steps`).
    """

    name = "min_redundancy"
    needs_embeddings = True

    def __init__(self, capacity: int, seed: int) -> None:
        super().__init__(capacity, seed)
        self._capacity = capacity
        self._emb: Optional[torch.Tensor] = None  # (C, D) l2-normalised float32, CPU
        self._has = torch.zeros(capacity, dtype=torch.bool)
        self._nn_sim = torch.full((capacity,), float("-inf"))
        self._nn_idx = torch.full((capacity,), -1, dtype=torch.long)
        self._round = np.zeros(capacity, dtype=np.int64)  # embedding round each slot's vector is from
        self._rounds = 0

    @property
    def embedded(self) -> int:
        return int(self._has.sum())

    def victim(self, slots: Slots, frames_seen: int) -> Optional[int]:
        pending = self.pending(slots)
        if len(pending) and (self.embedded < 2 or len(pending) >= self.embedded):
            # Too few to compare, or frames arrive faster than they are embedded: evicting embedded
            # ones would empty the curated set; drop the oldest of the backlog instead.
            return int(pending[0])
        if self.embedded < 2:
            return slots.oldest()
        scores = torch.where(self._has, self._nn_sim, torch.tensor(float("-inf")))
        return int(scores.argmax())

    def pending(self, slots: Slots) -> np.ndarray:
        """Valid slots with no embedding yet, oldest first."""
        has = self._has[: slots.size].numpy()
        idx = np.flatnonzero(slots.valid[: slots.size] & ~has)
        return idx[np.argsort(slots.ticket[idx], kind="stable")]

    def stalest(self, slots: Slots, n: int) -> np.ndarray:
        """Up to `n` valid embedded slots, the oldest embeddings first."""
        idx = np.flatnonzero(slots.valid[: slots.size] & self._has[: slots.size].numpy())
        return idx[np.argsort(self._round[idx], kind="stable")][:n]

    def to_embed(self, slots: Slots, n: int, refresh: bool) -> np.ndarray:
        return self.stalest(slots, n) if refresh else self.pending(slots)[:n]

    def stats(self) -> dict[str, Any]:
        return {"embedded": self.embedded}

    def forget(self, slot: int) -> None:
        if not bool(self._has[slot]):
            return
        self._has[slot] = False
        self._nn_sim[slot] = float("-inf")
        self._nn_idx[slot] = -1
        orphans = torch.nonzero(self._has & (self._nn_idx == slot)).flatten()
        self._rescore(orphans)

    def set_embeddings(self, slot_ids: torch.Tensor, vectors: torch.Tensor) -> None:
        """Record embeddings for `slot_ids` (unique) and update every nearest neighbour they affect."""
        vectors = torch.nn.functional.normalize(vectors.detach().float().cpu(), dim=1)
        if self._emb is None or self._emb.shape[1] != vectors.shape[1]:
            self._emb = torch.zeros(self._capacity, vectors.shape[1])
            self._has.zero_()
            self._nn_sim.fill_(float("-inf"))
            self._nn_idx.fill_(-1)
        for slot in slot_ids.tolist():
            self.forget(slot)
        self._rounds += 1
        self._round[slot_ids.numpy()] = self._rounds
        self._emb[slot_ids] = vectors
        old = torch.nonzero(self._has).flatten()
        self._has[slot_ids] = True
        if old.numel():
            sims = self._emb[old] @ vectors.T  # (old, new)
            best, arg = sims.max(dim=1)
            better = best > self._nn_sim[old]
            self._nn_sim[old[better]] = best[better]
            self._nn_idx[old[better]] = slot_ids[arg[better]]
        self._rescore(slot_ids)

    def _rescore(self, rows: torch.Tensor) -> None:
        """Recompute the nearest neighbour of `rows` against every embedded slot."""
        if rows.numel() == 0 or self._emb is None:
            return
        cols = torch.nonzero(self._has).flatten()
        if cols.numel() == 0:
            self._nn_sim[rows] = float("-inf")
            self._nn_idx[rows] = -1
            return
        sims = self._emb[rows] @ self._emb[cols].T
        sims[rows.unsqueeze(1) == cols.unsqueeze(0)] = float("-inf")
        best, arg = sims.max(dim=1)
        self._nn_sim[rows] = best
        self._nn_idx[rows] = torch.where(torch.isfinite(best), cols[arg], torch.tensor(-1))

    def state_dict(self) -> dict[str, Any]:
        if self._emb is None:
            return {}
        return {"emb": self._emb.clone(), "has": self._has.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "emb" not in state:
            return
        has = state["has"].bool()
        slot_ids = torch.nonzero(has).flatten()
        if slot_ids.numel():
            self.set_embeddings(slot_ids, state["emb"][slot_ids])

    def state_for(self, keep: np.ndarray) -> dict[str, Any]:
        state = self.state_dict()
        if "emb" in state:
            index = torch.from_numpy(keep)
            state = {"emb": state["emb"][index], "has": state["has"][index]}
        return state

    @staticmethod
    def reorder_state(state: dict[str, Any], order: torch.Tensor) -> dict[str, Any]:
        if "emb" in state:
            return {"emb": state["emb"][order], "has": state["has"][order]}
        return state
