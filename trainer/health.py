"""Warnings for a run left alone for hours: a falling online probe, a collapsing embedding.

Two checks on what the trainer measures already (issue 26, "learning that lasts"):

- `probe_falling`: the online probe's kNN top-1 (trainer/quality_monitor.py) is more than
  `train.warn_knn_drop` below its best in this process (0.02: the goal benchmarks/bench_longrun.py checks);
- `embedding_collapsing`: the embedding std (the batch std of the l2-normalised projections,
  trainer/byol.py: ~1/sqrt(d) when healthy, 0 once every image maps to one point, as SimSiam's
  collapse monitor, Chen & He 2021, Sec. 4.1) is below `train.warn_std_fraction` (0.5) of its peak in this process.

A warning is reported when it starts and when it clears, as one `{"event": "health"}` record each
(metrics.jsonl; TensorBoard's `health/<kind>` scalar and a text note), and listed in the status
fields' "warnings" while it holds (the trainer's live line, `byol-agent run`'s line). Both
references (best kNN, peak std) start afresh when a run resumes.
"""

from __future__ import annotations

import math
from typing import Any, Optional


class HealthWatch:
    """Tracks the best kNN and the peak embedding std; `probe` / `embedding` return a health record
    when a warning starts or clears (else None); `warnings()` lists the messages that hold now."""

    def __init__(self, knn_drop: float, std_fraction: float) -> None:
        """`knn_drop`: kNN top-1 below the best that counts as falling; `std_fraction`: of the peak std, below which
        the embedding counts as collapsing (`train.warn_knn_drop`, `train.warn_std_fraction`)."""
        self.knn_drop, self.std_fraction = knn_drop, std_fraction
        self.best_knn: Optional[float] = None
        self.peak_std: Optional[float] = None
        self._active: dict[str, str] = {}

    def probe(self, step: int, knn: Optional[float]) -> Optional[dict[str, Any]]:
        """After an online probe: its kNN top-1 (a fraction) at `step`."""
        if knn is None or not math.isfinite(knn):
            return None
        self.best_knn = knn if self.best_knn is None else max(self.best_knn, knn)
        falling = knn < self.best_knn - self.knn_drop
        message = f"probe falling: kNN {knn:.3f}, {self.best_knn - knn:.3f} below its best {self.best_knn:.3f}"
        return self._set("probe_falling", falling, message, step, knn, self.best_knn)

    def embedding(self, step: int, std: Optional[float]) -> Optional[dict[str, Any]]:
        """After a metrics window: the embedding std at `step`."""
        if std is None or not math.isfinite(std):
            return None
        self.peak_std = std if self.peak_std is None else max(self.peak_std, std)
        collapsing = std < self.std_fraction * self.peak_std
        message = f"embedding collapsing: std {std:.4f}, below {self.std_fraction:g}x its peak {self.peak_std:.4f}"
        return self._set("embedding_collapsing", collapsing, message, step, std, self.peak_std)

    def warnings(self) -> list[str]:
        return list(self._active.values())

    def _set(self, kind: str, on: bool, message: str, step: int, value: float, ref: float) -> Optional[dict[str, Any]]:
        was = kind in self._active
        if on:
            self._active[kind] = message
        else:
            self._active.pop(kind, None)
        if on == was:
            return None
        return {
            "event": "health",
            "kind": kind,
            "active": on,
            "step": step,
            "value": value,
            "reference": ref,
            "message": message if on else f"{kind.replace('_', ' ')}: cleared",
        }
