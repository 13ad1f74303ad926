"""Handing the learner's encoder on: to the exporter at the export cadence, and to the quality probes.

The continual trainer publishes copies of one encoder (`export.weights`: the target network, or the
online one) from its own thread without waiting: an eval-mode CPU copy and real replay-buffer frames
go to the exporter (export.exporter.BackgroundExporter, handed in by the orchestration layer as
`make_exporter(mean, std)`, since the exporter is a layer above the trainer), and the same state is
scored by the quality probes (trainer/quality_monitor.py) so that the report matches a score to the
version of its step. When the trainer has no exporter (`run`'s exporter is another process that
publishes each checkpoint), each checkpoint is probed instead. Rank 0 alone publishes and probes.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

import numpy as np
import torch

from agent.core import cadence
from agent.core.config import Config
from trainer.buffer import ReplayBuffer
from trainer.byol import BYOL
from trainer.distributed import Ranks
from trainer.run_state import RunState

if TYPE_CHECKING:
    from trainer.quality_monitor import QualityMonitor
    from trainer.run_monitor import RunMonitor

log = logging.getLogger(__name__)

EXPORT_CLOSE_TIMEOUT_S = 120.0


class Exporter(Protocol):
    """Publishes from the trainer's thread without waiting (export.exporter.BackgroundExporter)."""

    def submit(self, step: int, encoder: torch.nn.Module, frames: np.ndarray) -> None: ...

    def poll(self) -> list[dict[str, Any]]: ...

    def close(self, timeout_s: Optional[float] = None) -> None: ...


MakeExporter = Callable[[tuple[float, ...], tuple[float, ...]], Exporter]


class ExportHandoff:
    """The trainer's exporter and quality probes; see the module docstring.

    `make_exporter`: builds the exporter from the learner's (mean, std), or None (no in-process
    publishing); `compute_lock`: held by a training step and by each forward batch of a probe.
    The quality monitor is built now (rank 0, `train.probe_data` set); the exporter by `open`.
    """

    def __init__(
        self,
        cfg: Config,
        learner: BYOL,
        buffer: ReplayBuffer,
        state: RunState,
        ranks: Ranks,
        make_exporter: Optional[MakeExporter],
        compute_lock: threading.Lock,
        device: torch.device,
        take_snapshot: Callable[[Callable[[], torch.nn.Module]], None] = lambda make: None,
    ) -> None:
        self._cfg, self._learner, self._buffer, self._state, self._ranks = cfg, learner, buffer, state, ranks
        self._make_exporter_fn = make_exporter
        self._take_snapshot = take_snapshot  # train.compat_distill: the first version published is the snapshot
        self.quality = self._make_quality_monitor(compute_lock, device)
        self.exporter: Optional[Exporter] = None
        self._monitor: Optional["RunMonitor"] = None
        # the export clock starts at this session's first step (not at start-up, which under load can take
        # longer than export.every_seconds and would publish a nearly untrained version)
        self._last_export_time: Optional[float] = None

    def open(self, monitor: Optional["RunMonitor"]) -> None:
        """Start publishing: `monitor` (rank 0's) logs the probes; the exporter is built now when configured."""
        self._monitor = monitor
        self.exporter = self._make_exporter()

    def _make_exporter(self) -> Optional[Exporter]:
        ec = self._cfg.export
        if not cadence.scheduled(ec.every_steps, ec.every_seconds) or self._ranks.rank != 0:
            return None
        if self._make_exporter_fn is None:
            log.warning("export.every_steps/every_seconds is set but this trainer was given no exporter; not exporting")
            return None
        return self._make_exporter_fn(tuple(self._learner.mean), tuple(self._learner.std))

    def _make_quality_monitor(self, compute_lock: threading.Lock, device: torch.device) -> Optional["QualityMonitor"]:
        tc = self._cfg.train
        if tc.probe_data is None or self._ranks.rank != 0:
            return None
        from trainer.quality_monitor import QualityMonitor  # sklearn and onnxruntime load only when probing

        return QualityMonitor(
            tc.probe_data,
            self._cfg.model,
            self._cfg.eval,
            tc.seed,
            self._learner.mean,
            self._learner.std,
            device=device,
            weights=self._cfg.export.weights,
            compute_lock=compute_lock,
        )

    @property
    def step(self) -> int:
        return int(self._learner.step)

    def due(self, last_export_time: Optional[float]) -> bool:
        """agent.core.cadence's rule, the one `export --watch` follows too (the last export's step; its time,
        or this session's first step: None before it)."""
        ec = self._cfg.export
        if self.exporter is None:
            return False
        since = 0.0 if last_export_time is None else time.monotonic() - last_export_time
        return cadence.due(self.step, self._state.counters.last_export_step, ec.every_steps, since, ec.every_seconds)

    def stepped(self) -> None:
        """After a training step: export now when due (`due`)."""
        if self.due(self._last_export_time):
            self.submit()
            self._last_export_time = time.monotonic()
        elif self._last_export_time is None:
            self._last_export_time = time.monotonic()

    def submit(self) -> None:
        """Hand an eval copy of the encoder and real frames to the export thread (returns at once)."""
        assert self.exporter is not None
        gen = torch.Generator().manual_seed(self.step)
        ec = self._cfg.export  # enough frames to verify, and distinct ones to grow the exporter's calibration set from
        frames, _ = self._buffer.sample(max(ec.verify_batch, min(ec.calibration_frames, len(self._buffer))), gen)
        encoder = self.probed_encoder()
        self._take_snapshot(lambda: encoder)
        self.exporter.submit(self.step, encoder, frames.cpu().numpy())
        self._state.counters.last_export_step = self.step
        self.probe_published()

    def poll(self, on_event: Callable[[dict[str, Any]], None]) -> None:
        """Pass the exporter's finished events to `on_event`, noting each published version."""
        if self.exporter is None:
            return
        for event in self.exporter.poll():
            if event.get("event") == "export":
                self._state.counters.last_export_version = event["version"]
            on_event(event)

    def checkpointed(self) -> None:
        """A checkpoint was written: without an exporter here (`run`'s exporter publishes each checkpoint),
        score what it gets."""
        if self.exporter is None:
            self._take_snapshot(self.probed_encoder)
            self.probe_published()

    def probed_encoder(self) -> torch.nn.Module:
        return self._learner.encoder_module(self._cfg.export.weights)

    def probe_published(self, final: bool = False) -> None:
        """Probe the state just checkpointed or exported, or with `final` the one the run ends with (unless
        `train.probe_every` sets a step cadence): the report matches a score to the version of its step."""
        if self._monitor is not None and self._cfg.train.probe_every is None:
            self._monitor.probe(self._state.counters.last_export_version, self.probed_encoder, final=final)

    def close(self, on_event: Callable[[dict[str, Any]], None]) -> None:
        """Publish the final state when it is newer than the last export, wait for the exporter (up to
        EXPORT_CLOSE_TIMEOUT_S) and pass on its last events."""
        if self.exporter is None:
            return
        if self.step > self._state.counters.last_export_step and len(self._buffer) > 0:
            self.submit()
        self.exporter.close(EXPORT_CLOSE_TIMEOUT_S)
        self.poll(on_event)
