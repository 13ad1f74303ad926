"""The resumable state of a continual run and its checkpoint I/O.

What a restart needs to continue exactly: learner and optimizer (through `TrainStep`), every RNG
(Python, NumPy, torch, CUDA and the batch sampler), the counters, the step, and optionally the
replay buffer. `RunState.resume()` loads the newest readable checkpoint in the run directory
(newer unreadable ones are quarantined); `save()` writes one atomically, and on a full disk keeps
the last one on disk and schedules a retry with exponential back-off instead of failing the run.
Handed the `train` section only; the whole config is stored in each checkpoint as a record.

Multi-rank runs (trainer/distributed.py): learner and optimizer are the same on every rank, but
each rank has its own RNGs (view generator included), batch sampler, counters and replay-buffer
shard. `save()` is then a collective at the same step on every rank: rank 0 gathers each rank's
`rank_state()` and alone writes one checkpoint with the shared state, `world_size`, the run's
counters (`fleet_counters`: frames summed over the ranks) and the per-rank list under "ranks"
(top-level "rng" is rank 0's, top-level "buffer" is None). `resume()`: rank 0 reads the newest
checkpoint and broadcasts it (no shared filesystem needed), scattering each rank its own part.
Same world size: exact. Another world size (a single-process checkpoint included): weights,
target, optimizer, step and the run's counters resume; per-rank RNGs and buffers start afresh
(logged once). Single-process checkpoints keep the format they always had.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from agent.core import cadence
from agent.core.backoff import backoff_s
from agent.core.config import TrainConfig
from agent.core.errors import CheckpointError, StorageError
from trainer.buffer import ReplayBuffer
from trainer.checkpoint import (
    FORMAT,
    capture_rng,
    list_checkpoints,
    save_checkpoint,
    weights_digest,
)
from trainer.distributed import SOLO, Ranks
from trainer.rank_resume import read_newest, restart_rank_part, restore_rank_part
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


RECEIVED = ("frames_in", "frames_malformed", "frames_rejected", "connections_refused")  # each rank counts its own


def counters_from(record: dict[str, Any]) -> Counters:
    """Counters from a checkpoint's record (unknown keys of other versions ignored)."""
    counters = Counters(**{k: v for k, v in record.items() if k in Counters.__dataclass_fields__})
    counters.frames_per_camera = {int(k): int(v) for k, v in counters.frames_per_camera.items()}
    return counters


def fleet_counters(parts: Sequence[Counters]) -> Counters:
    """The run's counters from each rank's (rank order): frames received summed over the ranks (per camera
    too); NaN skips, restores and the export record as rank 0 has them (the same on every rank, or its alone)."""
    cameras: dict[int, int] = {}
    for part in parts:
        for camera, count in part.frames_per_camera.items():
            cameras[camera] = cameras.get(camera, 0) + count
    summed = {name: sum(getattr(part, name) for part in parts) for name in RECEIVED}
    return replace(parts[0], **summed, frames_per_camera=cameras)


def shared_counters(run: Counters) -> Counters:
    """What a rank other than 0 keeps of the run's counters when per-rank ones cannot be restored."""
    return Counters(
        nan_skips=run.nan_skips,
        restores=run.restores,
        last_export_version=run.last_export_version,
        last_export_step=run.last_export_step,
    )


class RunState:
    """Counters, RNGs and checkpoints of one run directory; the learner's state lives in `train_step`.

    `config_record`: the run's whole config as JSON, stored in each checkpoint so that `export`
    and `eval` can rebuild the encoder. `on_event(record)` receives a `checkpoint_failed` record
    for the metrics log. `ranks`: the run's ranks (see the module docstring); `counters` are this
    rank's, `fleet` the whole run's as last known (set on resume, at each checkpoint and by the loop).
    """

    def __init__(
        self,
        run_dir: Path,
        train_cfg: TrainConfig,
        train_step: TrainStep,
        buffer: ReplayBuffer,
        sampler: torch.Generator,
        config_record: dict[str, Any],
        ranks: Ranks = SOLO,
        export_frames: int = 0,
    ) -> None:
        """`export_frames`: without `train.save_buffer`, each checkpoint still carries up to this many
        replay-buffer frames, so an exporter working from checkpoints (`byol-agent run`) verifies on
        real frames and draws its compatibility calibration set from them (export/calibration.py)."""
        self.run_dir = Path(run_dir)
        self._export_frames = export_frames
        self._cfg = train_cfg
        self._train_step, self._buffer, self.sampler = train_step, buffer, sampler
        self._config_record = config_record
        self._ranks = ranks
        self.counters = Counters()
        self.fleet = Counters()
        self.resumed_from: Optional[str] = None
        self.last_checkpoint_step = 0
        # of the last checkpoint written, or of this session's first step (checkpoint_due starts it), not of start-up
        self._last_checkpoint_time: Optional[float] = None
        self._failures = 0
        self._retry_at = 0.0

    @property
    def step(self) -> int:
        return self._train_step.step

    def resume(self) -> None:
        """Continue from the newest readable checkpoint, if any; CheckpointError (one line) if it does not fit.

        Collective in a multi-rank run (every rank calls it once, at start-up)."""
        ckpt, mine = read_newest(self.run_dir, self._ranks)
        if ckpt is None:
            return
        views = self._views()
        fresh_views = views.get_state() if views is not None else None
        try:
            self._train_step.restore(ckpt)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(
                f"{ckpt['path']} does not fit the configured model ({str(exc).splitlines()[0][:160]}); "
                "use the run's own config or a new --run-dir"
            ) from None
        run_counters = counters_from(ckpt["counters"])
        saved_world = int(ckpt.get("world_size", 1))
        if saved_world == self._ranks.world_size:
            assert mine is not None  # the same world size: every rank has its part
            restore_rank_part(mine, self.sampler, self._views(), self._buffer)
            self.counters = counters_from(mine["counters"])
        else:  # each rank's RNGs and shard belonged to a rank layout that no longer exists
            restart_rank_part(Path(ckpt["path"]).name, saved_world, self._ranks, views, fresh_views, self._cfg)
            self.counters = run_counters if self._ranks.rank == 0 else shared_counters(run_counters)
        self.fleet = run_counters
        self.last_checkpoint_step = self.step
        self.resumed_from = ckpt["path"]
        log.info("resumed from %s at step %d", ckpt["path"], self.step)

    def _views(self) -> Optional[torch.Generator]:
        return self._train_step.learner.generator

    def state(self, ranks: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
        """Everything a checkpoint holds (format `trainer.checkpoint.FORMAT`); with `ranks` (every rank's
        `rank_state()`, rank order) the multi-rank content described in the module docstring."""
        shared = {
            "format": FORMAT,
            "step": self.step,
            "learner": self._train_step.learner.state_dict(),
            "optimizer": self._train_step.optimizer.state_dict(),
            "config": self._config_record,
            "export_frames": None if self._cfg.save_buffer else self._export_sample(),
        }
        if ranks is None:
            return {
                **shared,
                "rng": {**capture_rng(), "sampler": self.sampler.get_state()},
                "counters": asdict(self.counters),
                "buffer": self._buffer.state_dict() if self._cfg.save_buffer else None,
            }
        run = fleet_counters([counters_from(part["counters"]) for part in ranks])
        return {
            **shared,
            "rng": ranks[0]["rng"],
            "counters": asdict(run),
            "buffer": None,
            "world_size": len(ranks),
            "ranks": ranks,
        }

    def rank_state(self) -> dict[str, Any]:
        """This rank's part of a multi-rank checkpoint, with a digest of its weights (ranks must agree on them)."""
        views = self._views()
        return {
            "rank": self._ranks.rank,
            "step": self.step,
            "rng": {
                **capture_rng(),
                "sampler": self.sampler.get_state(),
                "views": views.get_state() if views is not None else None,
            },
            "counters": asdict(self.counters),
            "buffer": self._buffer.state_dict() if self._cfg.save_buffer else None,
            "weights_sha256": weights_digest(self._train_step.learner),
        }

    def _export_sample(self) -> Optional[torch.Tensor]:
        """Up to `export_frames` distinct buffer frames, uint8 NHWC on the CPU (None: fewer than 2 held),
        drawn with their own generator so that the training sampler's sequence is untouched."""
        n = min(self._export_frames, len(self._buffer))
        if n < 2:
            return None
        images, _ = self._buffer.sample(n, torch.Generator().manual_seed(self.step))
        return images.cpu()

    def checkpoint_due(self, clear: Optional[bool] = None) -> bool:
        """`train.checkpoint_every` steps or (a single process only: ranks' clocks differ, and a checkpoint is
        a collective) `train.checkpoint_every_seconds` since the last one (agent.core.cadence), and not inside
        a full-disk back-off (`clear`: whether rank 0 is out of it, as the ranks agreed this turn; None: look now).
        Called after every step."""
        every_seconds = self._cfg.checkpoint_every_seconds if self._ranks.solo else None
        if self._last_checkpoint_time is None:  # the first step of this session starts the clock
            self._last_checkpoint_time = time.monotonic()
        since = time.monotonic() - self._last_checkpoint_time
        due = cadence.due(self.step, self.last_checkpoint_step, self._cfg.checkpoint_every, since, every_seconds)
        return due and (self.retry_passed() if clear is None else clear)

    def retry_passed(self) -> bool:
        """Not waiting out a full-disk back-off (always true on ranks that never write)."""
        return time.monotonic() >= self._retry_at

    @property
    def unsaved(self) -> bool:
        return self.step > self.last_checkpoint_step

    def save(self, on_event: Optional[Callable[[dict[str, Any]], None]]) -> bool:
        """Write a checkpoint of now (True); on a full disk keep the last one on disk and retry later (False).

        In a multi-rank run a collective at the same step on every rank: rank 0 writes (reporting a
        failure to `on_event`) and every rank returns its result. Raises CollectiveError when a peer is gone.
        """
        if self._ranks.solo:
            return self._write(self.state(), on_event)
        parts = self._ranks.gather(self.rank_state())
        saved = None
        if parts is not None:  # rank 0
            digests = {part["weights_sha256"] for part in parts}
            if len(digests) > 1:
                log.error(
                    "the ranks' weights differ at step %d (%d versions); the checkpoint holds rank 0's",
                    self.step,
                    len(digests),
                )
            self.fleet = fleet_counters([counters_from(part["counters"]) for part in parts])
            saved = self._write(self.state(parts), on_event)
        saved = bool(self._ranks.broadcast(saved))
        if saved:
            self.last_checkpoint_step = self.step
        return saved

    def gather_counters(self) -> None:
        """Collective: rank 0 learns every rank's counters, `fleet` becomes the run's (per camera too)."""
        parts = self._ranks.gather(asdict(self.counters))
        if parts is not None:
            self.fleet = fleet_counters([counters_from(part) for part in parts])

    def _write(self, state: dict[str, Any], on_event: Optional[Callable[[dict[str, Any]], None]]) -> bool:
        try:
            path = save_checkpoint(self.run_dir, state, self._cfg.keep_checkpoints)
        except StorageError as exc:
            self._failures += 1
            delay = backoff_s(self._failures, first_s=2.0, max_s=CHECKPOINT_BACKOFF_MAX_S)
            self._retry_at = time.monotonic() + delay
            kept = next(iter(list_checkpoints(self.run_dir)), (None, None))[1]
            log.warning("%s; still have %s, retrying in %.0f s", exc, kept.name if kept else "no checkpoint", delay)
            if on_event is not None:
                on_event({"event": "checkpoint_failed", "step": self.step, "reason": str(exc)})
            return False
        self._failures, self._retry_at = 0, 0.0
        self.last_checkpoint_step = self.step
        self._last_checkpoint_time = time.monotonic()
        log.info("checkpoint %s", path.name)
        return True
