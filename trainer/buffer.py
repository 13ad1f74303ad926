"""Replay buffer: preallocated uint8 frames shared by the ingest thread and the training loop.

Storage is allocated once (bounded in frames and in bytes), so a long run never grows; it lives in
pinned host memory when training on CUDA (non_blocking copies overlap the step) or on the GPU itself
with `buffer.device=cuda`. What to evict is a small pluggable policy (trainer/eviction/): FIFO, reservoir, or
minimum-redundancy (drop the frame most similar to its nearest neighbour in the target's embedding
space), because temporally correlated video ruins naive streaming SSL and no one policy wins always.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch

from agent.core.config import BufferConfig
from agent.core.errors import ConfigError
from trainer.eviction import Slots, make_policy
from trainer.temporal_positives import temporal_partners

if TYPE_CHECKING:
    from agent.core.wire import Frame


def storage_device(cfg: BufferConfig, train_device: torch.device) -> torch.device:
    """Where frames live: on the GPU only when asked for; host memory otherwise."""
    if cfg.device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("buffer.device is 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")
        return train_device if train_device.type == "cuda" else torch.device("cuda")
    return torch.device("cpu")


def replay_capacity(cfg: BufferConfig, frame_shape: tuple[int, int, int]) -> int:
    """Frames the buffer holds: `buffer.capacity_frames`, fewer when `buffer.capacity_bytes` says so.

    ConfigError for frames that are neither RGB nor gray, or a byte budget that holds under 2 frames.
    """
    h, w, c = frame_shape
    if c not in (1, 3):
        raise ConfigError(f"replay buffer stores RGB or gray frames; got {c} channels")
    capacity = cfg.capacity_frames
    if cfg.capacity_bytes is not None:
        capacity = min(capacity, cfg.capacity_bytes // (h * w * c))
    if capacity < 2:
        raise ConfigError(
            f"buffer.capacity_bytes ({cfg.capacity_bytes}) holds {capacity} frame(s) of {h}x{w}x{c}; "
            "at least 2 are needed"
        )
    return capacity


class ReplayBuffer:
    """Fixed-capacity uint8 frame store with a pluggable eviction policy; safe for one writer + one reader.

    A lock guards the bookkeeping only: `add` marks its slot invalid, copies the pixels outside the
    lock, then marks it valid; `sample` draws from valid slots and gathers them under the lock
    (a single index_select, so the writer is never held up for long).
    """

    def __init__(self, cfg: BufferConfig, frame_shape: tuple[int, int, int], device: torch.device, seed: int = 0):
        h, w, c = frame_shape
        capacity = replay_capacity(cfg, (h, w, c))
        self.cfg = cfg
        self.frame_shape = (h, w, c)
        self.capacity = capacity
        self.device = storage_device(cfg, torch.device(device))
        self._pin = self.device.type == "cpu" and torch.device(device).type == "cuda"
        self.min_fill = min(cfg.min_fill, capacity)
        # Only each sampled batch is pinned (`_gather`): the store itself stays pageable, so a large
        # buffer does not lock gigabytes of host RAM.
        self._storage = torch.empty((capacity, h, w, c), dtype=torch.uint8, device=self.device)
        self._slots = Slots(capacity)
        self._policy = make_policy(cfg, capacity, seed)
        self._lock = threading.Lock()
        self._frames_seen = 0
        self._evictions = 0
        self._rejected = 0
        self._per_camera: Counter[int] = Counter()

    # -- writer side -------------------------------------------------------------------------

    def add(self, frame: "Frame") -> bool:
        """Store one frame; False when the policy declined it (reservoir). Shape must match."""
        image = frame.image
        if tuple(image.shape) != self.frame_shape or image.dtype != np.uint8:
            raise ValueError(f"frame shape {tuple(image.shape)} {image.dtype} != buffer {self.frame_shape} uint8")
        s = self._slots
        with self._lock:
            self._frames_seen += 1
            if s.size < s.capacity:
                slot = s.size
                s.size += 1
            else:
                victim = self._policy.victim(s, self._frames_seen)
                if victim is None:
                    self._rejected += 1
                    return False
                slot = victim
                self._evictions += 1
                self._per_camera[int(s.camera_id[slot])] -= 1
                self._policy.forget(slot)
            s.valid[slot] = False
        self._storage[slot].copy_(torch.from_numpy(np.ascontiguousarray(image)))
        with self._lock:
            s.camera_id[slot] = frame.camera_id
            s.seq[slot] = frame.seq
            s.timestamp[slot] = frame.timestamp
            s.inserted_at[slot] = time.monotonic()
            s.ticket[slot] = self._frames_seen
            s.valid[slot] = True
            self._per_camera[int(frame.camera_id)] += 1
        return True

    # -- reader side -------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return int(self._slots.valid.sum())

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Draw `n` frames (without replacement while possible) as uint8 NHWC on the storage device.

        With `temporal_positives`, also returns each frame's partner: a frame of the same camera
        about `temporal_delta_s` before or after it (the frame itself when its camera has no other).
        """
        with self._lock:
            slots = np.flatnonzero(self._slots.valid[: self._slots.size])
            if slots.size == 0:
                raise RuntimeError("sample() from an empty replay buffer")
            if n <= slots.size:
                pick = torch.randperm(slots.size, generator=generator)[:n].numpy()
            else:
                pick = torch.randint(0, slots.size, (n,), generator=generator).numpy()
            anchors = slots[pick]
            images = self._gather(anchors)
            if not self.cfg.temporal_positives:
                return images, None
            signs = torch.randint(0, 2, (n,), generator=generator).numpy() * 2 - 1
            partners = temporal_partners(self._slots, slots, anchors, signs, self.cfg.temporal_delta_s)
            return images, self._gather(partners)

    def _gather(self, slot_ids: np.ndarray) -> torch.Tensor:
        index = torch.from_numpy(slot_ids.astype(np.int64))
        if self.device.type == "cuda":  # a pageable host-to-device copy would synchronise the stream every step
            index = index.pin_memory().to(self.device, non_blocking=True)
        out = torch.empty(
            (len(slot_ids), *self.frame_shape), dtype=torch.uint8, device=self.device, pin_memory=self._pin
        )
        return torch.index_select(self._storage, 0, index, out=out)

    # -- embeddings, for a policy that compares frames by them (minimum redundancy) ------------

    @property
    def wants_embeddings(self) -> bool:
        return self._policy.needs_embeddings

    def frames_to_embed(self, n: int, refresh: bool = False) -> Optional[tuple[np.ndarray, np.ndarray, torch.Tensor]]:
        """Up to `n` stored frames that have no embedding yet, or with `refresh` the `n` stalest
        embedded ones: (slots, tickets, uint8 NHWC images); None when there are none."""
        if not self._policy.needs_embeddings:
            return None
        with self._lock:
            slot_ids = self._policy.to_embed(self._slots, n, refresh)
            if slot_ids.size == 0:
                return None
            return slot_ids, self._slots.ticket[slot_ids].copy(), self._gather(slot_ids)

    def set_embeddings(self, slot_ids: np.ndarray, tickets: np.ndarray, vectors: torch.Tensor) -> int:
        """Record embeddings from `frames_to_embed`; frames replaced meanwhile are skipped. Returns how many kept."""
        if not self._policy.needs_embeddings:
            return 0
        with self._lock:
            still = (self._slots.ticket[slot_ids] == tickets) & self._slots.valid[slot_ids]
            keep = np.flatnonzero(still)
            if keep.size:
                self._policy.set_embeddings(torch.from_numpy(slot_ids[keep]), vectors[torch.from_numpy(keep)])
            return int(keep.size)

    # -- statistics and persistence ------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Fill, capacity, per-camera counts, evictions, rejected (reservoir), and age of stored frames in s."""
        with self._lock:
            s = self._slots
            valid = s.valid[: s.size]
            ages = time.monotonic() - s.inserted_at[: s.size][valid]
            stored = int(valid.sum())
            out = {
                "size": stored,
                "capacity": self.capacity,
                "fill": stored / self.capacity,
                "frames_seen": self._frames_seen,
                "evictions": self._evictions,
                "rejected": self._rejected,
                "per_camera": {str(k): v for k, v in sorted(self._per_camera.items()) if v > 0},
                "age_mean_s": float(ages.mean()) if stored else 0.0,
                "age_max_s": float(ages.max()) if stored else 0.0,
            }
            out.update(self._policy.stats())
            return out

    def state_dict(self) -> dict[str, Any]:
        """Contents and counters as tensors/primitives (loadable with torch.load(weights_only=True))."""
        with self._lock:
            s = self._slots
            keep = np.flatnonzero(s.valid[: s.size])
            now = time.monotonic()
            state = {
                "frame_shape": list(self.frame_shape),
                "images": self._storage[torch.from_numpy(keep).to(self.device)].cpu(),
                "camera_id": torch.from_numpy(s.camera_id[keep].copy()),
                "seq": torch.from_numpy(s.seq[keep].copy()),
                "timestamp": torch.from_numpy(s.timestamp[keep].copy()),
                "age_s": torch.from_numpy(now - s.inserted_at[keep]),
                "ticket": torch.from_numpy(s.ticket[keep].copy()),
                "frames_seen": self._frames_seen,
                "evictions": self._evictions,
                "rejected": self._rejected,
                "policy": self.cfg.policy,
                "policy_state": self._policy.state_for(keep),
            }
            return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Refill from `state_dict` output; frames beyond this buffer's capacity (oldest first) are dropped."""
        if tuple(state["frame_shape"]) != self.frame_shape:
            raise ValueError(
                f"saved buffer frames are {tuple(state['frame_shape'])}, this buffer stores {self.frame_shape}"
            )
        n_saved = int(state["images"].shape[0])
        order = torch.argsort(state["ticket"])[max(0, n_saved - self.capacity) :]
        n = int(order.numel())
        now = time.monotonic()
        with self._lock:
            s = self._slots
            self._storage[:n].copy_(state["images"][order].to(self.device))
            s.size = n
            s.valid[:] = False
            s.valid[:n] = True
            s.camera_id[:n] = state["camera_id"][order].numpy()
            s.seq[:n] = state["seq"][order].numpy()
            s.timestamp[:n] = state["timestamp"][order].numpy()
            s.inserted_at[:n] = now - state["age_s"][order].numpy()
            s.ticket[:n] = state["ticket"][order].numpy()
            self._frames_seen = int(state["frames_seen"])
            self._evictions = int(state["evictions"])
            self._rejected = int(state["rejected"])
            self._per_camera = Counter(int(c) for c in s.camera_id[:n])
            if state.get("policy") == self.cfg.policy:
                self._policy.load_state_dict(self._policy.reorder_state(state["policy_state"], order))
