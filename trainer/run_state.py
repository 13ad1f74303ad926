"""The resumable state of a continual run and its checkpoint I/O.

What a restart needs to continue exactly: learner and optimizer (through `TrainStep`), every RNG
(Python, NumPy, torch, CUDA and the batch sampler), the counters, the step, and optionally the
replay buffer. `RunState.resume()` loads the newest readable checkpoint in the run directory
(newer unreadable ones are quarantined); `save()` writes one atomically, and on a full disk keeps
the last one on disk and schedules a retry with exponential back-off instead of failing the run.
Handed the `train` section only; the whole config is stored in each checkpoint as a record.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from agent.core.repeats import backoff_s
from agent.core.config import TrainConfig
from agent.core.errors import CheckpointError, StorageError
from trainer.buffer import ReplayBuffer
from trainer.checkpoint import (
    FORMAT,
    capture_rng,
    list_checkpoints,
    load_latest_checkpoint,
    quarantine_newer,
    restore_rng,
    save_checkpoint,
)
from trainer.train_step import TrainStep

log = logging.getLogger(__name__)

CHECKPOINT_BACKOFF_MAX_S = 60.0  # a checkpoint that could not be written is retried after 2, 4, ... s up to this


@dataclass
class Counters:
    """Totals that survive restarts (saved in every checkpoint)."""

    frames_in: int = 0
    frames_malformed: int = 0
    frames_rejected: int = 0
    connections_refused: int = 0
    nan_skips: int = 0
    restores: int = 0
    last_export_version: Optional[int] = None
    last_export_step: int = 0
    frames_per_camera: dict[int, int] = field(default_factory=dict)  # frames received, by camera id


class RunState:
    """Counters, RNGs and checkpoints of one run directory; the learner's state lives in `train_step`.

    `config_record`: the run's whole config as JSON, stored in each checkpoint so that `export`
    and `eval` can rebuild the encoder. `on_event(record)` receives a `checkpoint_failed` record
    for the metrics log.
    """

    def __init__(
        self,
        run_dir: Path,
        train_cfg: TrainConfig,
        train_step: TrainStep,
        buffer: ReplayBuffer,
        sampler: torch.Generator,
        config_record: dict[str, Any],
        export_frames: int = 0,
    ) -> None:
        """`export_frames`: without `train.save_buffer`, each checkpoint still carries up to this many
        replay-buffer frames, so an exporter working from checkpoints (`byol-agent run`) verifies on
        real frames and draws its compatibility calibration set from them (export/compat.py)."""
        self.run_dir = Path(run_dir)
        self._export_frames = export_frames
        self._cfg = train_cfg
        self._train_step, self._buffer, self.sampler = train_step, buffer, sampler
        self._config_record = config_record
        self.counters = Counters()
        self.resumed_from: Optional[str] = None
        self.last_checkpoint_step = 0
        self._failures = 0
        self._retry_at = 0.0

    @property
    def step(self) -> int:
        return self._train_step.step

    def resume(self) -> None:
        """Continue from the newest readable checkpoint, if any; CheckpointError (one line) if it does not fit."""
        ckpt = load_latest_checkpoint(self.run_dir)
        quarantine_newer(self.run_dir, None if ckpt is None else int(ckpt["step"]))
        if ckpt is None:
            return
        try:
            self._train_step.restore(ckpt)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(
                f"{ckpt['path']} does not fit the configured model ({str(exc).splitlines()[0][:160]}); "
                "use the run's own config or a new --run-dir"
            ) from None
        restore_rng(ckpt["rng"])
        self.sampler.set_state(ckpt["rng"]["sampler"])
        self.counters = Counters(**{k: v for k, v in ckpt["counters"].items() if k in Counters.__dataclass_fields__})
        self.counters.frames_per_camera = {int(k): int(v) for k, v in self.counters.frames_per_camera.items()}
        if ckpt.get("buffer") is not None:
            try:
                self._buffer.load_state_dict(ckpt["buffer"])
            except ValueError as exc:
                log.warning("not restoring the saved replay buffer: %s", exc)
        self.last_checkpoint_step = self.step
        self.resumed_from = ckpt["path"]
        log.info("resumed from %s at step %d", ckpt["path"], self.step)

    def state(self) -> dict[str, Any]:
        """Everything a checkpoint holds (format `trainer.checkpoint.FORMAT`)."""
        return {
            "format": FORMAT,
            "step": self.step,
            "learner": self._train_step.learner.state_dict(),
            "optimizer": self._train_step.optimizer.state_dict(),
            "rng": {**capture_rng(), "sampler": self.sampler.get_state()},
            "config": self._config_record,
            "counters": asdict(self.counters),
            "buffer": self._buffer.state_dict() if self._cfg.save_buffer else None,
            "export_frames": None if self._cfg.save_buffer else self._export_sample(),
        }

    def _export_sample(self) -> Optional[torch.Tensor]:
        """Up to `export_frames` distinct buffer frames, uint8 NHWC on the CPU (None: fewer than 2 held),
        drawn with their own generator so that the training sampler's sequence is untouched."""
        n = min(self._export_frames, len(self._buffer))
        if n < 2:
            return None
        images, _ = self._buffer.sample(n, torch.Generator().manual_seed(self.step))
        return images.cpu()

    def checkpoint_due(self) -> bool:
        """`train.checkpoint_every` steps since the last one, and not inside a full-disk back-off."""
        due = self.step - self.last_checkpoint_step >= self._cfg.checkpoint_every
        return due and time.monotonic() >= self._retry_at

    @property
    def unsaved(self) -> bool:
        return self.step > self.last_checkpoint_step

    def save(self, on_event: Callable[[dict[str, Any]], None]) -> bool:
        """Write a checkpoint of now (True); on a full disk keep the last one on disk and retry later (False)."""
        try:
            path = save_checkpoint(self.run_dir, self.state(), self._cfg.keep_checkpoints)
        except StorageError as exc:
            self._failures += 1
            delay = backoff_s(self._failures, first_s=2.0, max_s=CHECKPOINT_BACKOFF_MAX_S)
            self._retry_at = time.monotonic() + delay
            kept = next(iter(list_checkpoints(self.run_dir)), (None, None))[1]
            log.warning("%s; still have %s, retrying in %.0f s", exc, kept.name if kept else "no checkpoint", delay)
            on_event({"event": "checkpoint_failed", "step": self.step, "reason": str(exc)})
            return False
        self._failures, self._retry_at = 0, 0.0
        self.last_checkpoint_step = self.step
        log.info("checkpoint %s", path.name)
        return True
