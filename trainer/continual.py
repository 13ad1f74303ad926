"""The continual trainer: frames stream in on one thread, BYOL updates run on this one, forever.

One `ContinualTrainer.run(stop)` owns a learner, an optimizer, a replay buffer, an ingest thread,
checkpoints, metrics and (optionally) a background ONNX exporter. Training starts once the buffer
holds `buffer.min_fill` frames and never runs more than `train.replay_ratio` updates per frame
ingested, so a stalled camera does not turn into overfitting on a frozen buffer. A non-finite loss
skips its step; `train.nan_tolerance` in a row restore the last good state. Every exit that is not
a kill -9 (max steps, SIGINT/SIGTERM, drained replay input, an error) ends with a checkpoint from
which a restart continues exactly: weights, target, optimizer, RNGs, counters, step.
"""

from __future__ import annotations

import copy
import logging
import random
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, TextIO

import numpy as np
import torch

from agent.core.atomic import remove_stale_temps
from agent.core.config import Config, TrainConfig, dump_config
from agent.core.errors import ByolAgentError, CheckpointError, ConfigError, StorageError
from trainer.buffer import ReplayBuffer
from trainer.build import build_learner, build_optimizer
from trainer.checkpoint import (
    FORMAT,
    capture_rng,
    checkpoint_dir,
    list_checkpoints,
    load_latest_checkpoint,
    quarantine_newer,
    restore_rng,
    save_checkpoint,
)
from trainer.ingest import FrameInbox, Ingestor
from trainer.metrics import MetricsWriter
from trainer.train_step import TrainStep

if TYPE_CHECKING:
    from trainer.evaluation import EvalResult
    from trainer.quality_monitor import QualityMonitor

log = logging.getLogger(__name__)

MAX_RESTORES_WITHOUT_PROGRESS = 3  # restores with no checkpoint between them: the run diverges, stop
DRAINED_AFTER_S = 0.5  # replay input counts as exhausted after this long with nothing arriving
EXPORT_CLOSE_TIMEOUT_S = 120.0
CHECKPOINT_BACKOFF_MAX_S = 60.0  # a checkpoint that could not be written is retried after 2, 4, ... s up to this


class TrainingDiverged(ByolAgentError):
    """The loss stays non-finite even from the last good state."""


def resolve_device(train_cfg: TrainConfig) -> torch.device:
    """CUDA when there is one (or when asked for, which fails clearly without one), else the CPU."""
    if train_cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")
    if train_cfg.device == "cuda" or (train_cfg.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


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


class _Window:
    """Losses and throughput between two metric lines."""

    def __init__(self, step: int) -> None:
        self.start_step = step
        self.start_time = time.monotonic()
        self.losses: list[float] = []

    def rates(self, step: int, batch_size: int) -> tuple[Optional[float], Optional[float]]:
        elapsed = time.monotonic() - self.start_time
        if step <= self.start_step or elapsed <= 0:
            return None, None
        steps_per_s = (step - self.start_step) / elapsed
        return steps_per_s, steps_per_s * batch_size


class Exporter(Protocol):
    """Publishes from the trainer's thread without waiting (export.exporter.BackgroundExporter)."""

    def submit(self, step: int, encoder: torch.nn.Module, frames: np.ndarray) -> None: ...

    def poll(self) -> list[dict[str, Any]]: ...

    def close(self, timeout_s: Optional[float] = None) -> None: ...


class ContinualTrainer:
    """Continual BYOL on frames from the inbox `open_receiver` opens; checkpoints and metrics in `run_dir`.

    The trainer imports neither the transport nor the exporter (they are layers above it): the
    orchestration layer hands in `open_receiver()` (called by `run`, so a bad endpoint fails there)
    and, for in-process publishing, `make_exporter(mean, std)` (agent/pipeline.py builds both).
    `lossless=True` (replay as fast as training consumes) holds ingestion back until training has
    used the frames it has, so every frame gets its share of updates and the sender blocks.
    """

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        *,
        open_receiver: Callable[[], FrameInbox],
        make_exporter: Optional[Callable[[tuple[float, ...], tuple[float, ...]], Exporter]] = None,
        lossless: bool = False,
        write_config: bool = True,
        stream: Optional[TextIO] = None,
    ) -> None:
        self.cfg = cfg
        self._open_receiver = open_receiver
        self._make_exporter_fn = make_exporter
        self.run_dir = Path(run_dir)
        self.lossless = lossless
        self._write_config = write_config
        self._stream = stream
        tc = cfg.train
        if tc.threads is not None:
            torch.set_num_threads(tc.threads)
        self.device = resolve_device(tc)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed batch and image size: autotuned kernels pay off
        torch.manual_seed(tc.seed)
        np.random.seed(tc.seed % 2**32)
        random.seed(tc.seed)
        self.learner = build_learner(cfg.model, tc, self.device, cfg.augment)
        self.optimizer = build_optimizer(self.learner, tc)
        self.train_step = TrainStep(self.learner, self.optimizer, tc, self.device)
        self.buffer = ReplayBuffer(cfg.buffer, (cfg.capture.height, cfg.capture.width, 3), self.device, seed=tc.seed)
        self.sampler = torch.Generator().manual_seed(tc.seed)
        self.counters = Counters()
        self.resumed_from: Optional[str] = None
        self._last_checkpoint_step = 0
        self._resume()
        self.monitor = self._make_monitor()
        self._last_probe: Optional["EvalResult"] = None
        self._probe_submitted_at: Optional[int] = None
        self.train_step.mark_good()
        self._restores_in_a_row = 0
        self._checkpoint_failures = 0
        self._checkpoint_retry_at = 0.0

    # -- state -------------------------------------------------------------------------------

    @property
    def step(self) -> int:
        return int(self.learner.step)

    def _resume(self) -> None:
        ckpt = load_latest_checkpoint(self.run_dir)
        quarantine_newer(self.run_dir, None if ckpt is None else int(ckpt["step"]))
        if ckpt is None:
            return
        try:
            self.train_step.restore(ckpt)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(
                f"{ckpt['path']} does not fit the configured model ({str(exc).splitlines()[0][:160]}); "
                "use the run's own config or a new --run-dir"
            ) from None
        restore_rng(ckpt["rng"])
        self.sampler.set_state(ckpt["rng"]["sampler"])
        self.counters = Counters(**{k: v for k, v in ckpt["counters"].items() if k in Counters.__dataclass_fields__})
        if ckpt.get("buffer") is not None:
            try:
                self.buffer.load_state_dict(ckpt["buffer"])
            except ValueError as exc:
                log.warning("not restoring the saved replay buffer: %s", exc)
        self._last_checkpoint_step = self.step
        self.resumed_from = ckpt["path"]
        log.info("resumed from %s at step %d", ckpt["path"], self.step)

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "step": self.step,
            "learner": self.learner.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": {**capture_rng(), "sampler": self.sampler.get_state()},
            "config": self.cfg.model_dump(mode="json"),
            "counters": asdict(self.counters),
            "buffer": self.buffer.state_dict() if self.cfg.train.save_buffer else None,
        }

    def _save_checkpoint(self) -> bool:
        """Write a checkpoint of now; on a full disk keep the last one on disk and retry with backoff."""
        try:
            path = save_checkpoint(self.run_dir, self.checkpoint_state(), self.cfg.train.keep_checkpoints)
        except StorageError as exc:
            self._checkpoint_failures += 1
            backoff = min(CHECKPOINT_BACKOFF_MAX_S, 2.0**self._checkpoint_failures)
            self._checkpoint_retry_at = time.monotonic() + backoff
            kept = next(iter(list_checkpoints(self.run_dir)), (None, None))[1]
            log.warning("%s; still have %s, retrying in %.0f s", exc, kept.name if kept else "no checkpoint", backoff)
            self.metrics.log({"event": "checkpoint_failed", "step": self.step, "reason": str(exc)})
            return False
        self._checkpoint_failures, self._checkpoint_retry_at = 0, 0.0
        self._last_checkpoint_step = self.step
        self.train_step.mark_good()
        self._restores_in_a_row = 0
        log.info("checkpoint %s", path.name)
        return True

    # -- the loop ----------------------------------------------------------------------------

    def run(
        self,
        stop: threading.Event,
        input_done: Optional[threading.Event] = None,
        on_bound: Optional[Callable[[str], None]] = None,
    ) -> int:
        """Train until `stop` is set, `train.max_steps` is reached, or `input_done` is set and drained.

        `on_bound(endpoint)` is called once frames can be received, with the endpoint actually bound
        (a `tcp://HOST:*` config picks a free port). Returns 0; raises what `open_receiver` raises (an
        EndpointError for an endpoint that cannot be bound), and re-raises an ingest-thread failure
        after the final checkpoint.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for folder in (self.run_dir, checkpoint_dir(self.run_dir)):
            remove_stale_temps(folder)  # what a killed predecessor was writing
        if self._write_config:
            try:
                dump_config(self.cfg, self.run_dir / "config.yaml")
            except OSError as exc:  # a record for people, not needed to train
                log.warning("config.yaml not written: %s", exc.strerror or exc)
        receiver = self._open_receiver()
        self._prior = copy.copy(self.counters)
        self.ingest = Ingestor(receiver, self.buffer, self._may_take if self.lossless else None)
        self.metrics = MetricsWriter(self.run_dir, stream=self._stream)
        self.exporter = self._make_exporter()
        self.metrics.log({"event": "start", "step": self.step, "resumed_from": self.resumed_from,
                          "device": str(self.device), "endpoint": receiver.endpoint})
        self.ingest.start()
        try:
            if on_bound is not None:
                on_bound(receiver.endpoint)
            self._loop(stop, input_done)
        finally:
            self.ingest.stop()
            self._sync_counters()
            self._shutdown()
        self.ingest.check()
        return 0

    def _loop(self, stop: threading.Event, input_done: Optional[threading.Event]) -> None:
        tc = self.cfg.train
        window = _Window(self.step)
        last_export_time = time.monotonic()
        input_done_at: Optional[float] = None
        while not stop.is_set():
            self.ingest.check()
            self._sync_counters()
            self._log_exports()
            if tc.max_steps is not None and self.step >= tc.max_steps:
                break
            if input_done is not None and input_done_at is None and input_done.is_set():
                input_done_at = time.monotonic()
            drained = input_done_at is not None and self.ingest.idle_for() > DRAINED_AFTER_S and (
                time.monotonic() - input_done_at > DRAINED_AFTER_S
            )
            if self.buffer.wants_embeddings:
                self._embed_pending()
            if not self._can_step(drained):
                if drained:
                    break
                self._status(window, "waiting for frames")
                self.ingest.arrived.wait(0.1)
                self.ingest.arrived.clear()
                continue
            loss = self._train_step()
            self.ingest.wake()
            if loss is not None:
                window.losses.append(loss)
            if self.step % tc.metrics_every == 0 and window.losses:
                self._log_metrics(window)
                window = _Window(self.step)
            due = self.step - self._last_checkpoint_step >= tc.checkpoint_every
            if due and self.train_step.nan_streak == 0 and time.monotonic() >= self._checkpoint_retry_at:
                self._save_checkpoint()
            refresh = self.cfg.buffer.refresh_every_steps
            if self.buffer.wants_embeddings and refresh is not None and self.step % refresh == 0:
                self._embed_pending(refresh=True)
            if self._export_due(last_export_time):
                self._submit_export()
                last_export_time = time.monotonic()
            if self._probe_due():
                self.monitor.submit(self.step, self.counters.last_export_version, self.learner.encoder_module("target"))
                self._probe_submitted_at = self.step
            self._log_probes()
            self._status(window, "training")

    def _can_step(self, drained: bool) -> bool:
        stored = len(self.buffer)
        ready = stored >= self.buffer.min_fill or (drained and stored >= 2)
        return ready and self.step < self.cfg.train.replay_ratio * self.counters.frames_in

    def _may_take(self, frames_in_now: int) -> bool:
        """Lossless ingest: take a frame while filling, or once training has used all but one frame's updates."""
        if len(self.buffer) < self.buffer.min_fill:
            return True
        ratio = self.cfg.train.replay_ratio
        return self.step >= ratio * (self._prior.frames_in + frames_in_now - 1)

    def _sync_counters(self) -> None:
        c, p, ing = self.counters, self._prior, self.ingest
        c.frames_in = p.frames_in + ing.frames_in
        c.frames_malformed = p.frames_malformed + ing.frames_malformed
        c.frames_rejected = p.frames_rejected + ing.frames_rejected
        c.connections_refused = p.connections_refused + ing.connections_refused

    def _train_step(self) -> Optional[float]:
        """One BYOL update; None when the loss was not finite (step skipped and counted)."""
        images, partners = self.buffer.sample(self.cfg.train.batch_size, self.sampler)
        value = self.train_step(images, partners)
        if value is None:
            self._on_nonfinite()
        return value

    def _on_nonfinite(self) -> None:
        self.counters.nan_skips += 1
        streak = self.train_step.nan_streak
        log.warning("non-finite loss at step %d: step skipped (%d in a row)", self.step, streak)
        if streak >= self.cfg.train.nan_tolerance:
            bad_step = self.step
            self.train_step.restore_good()
            self.counters.restores += 1
            self._restores_in_a_row += 1
            log.warning("%d non-finite losses in a row: restored the last good state (step %d)",
                        self.cfg.train.nan_tolerance, self.step)
            self.metrics.log({"event": "restore", "from_step": bad_step, "step": self.step,
                              "restores": self.counters.restores, "nan_skips": self.counters.nan_skips})
            if self._restores_in_a_row >= MAX_RESTORES_WITHOUT_PROGRESS:
                raise TrainingDiverged(
                    f"loss stays non-finite after {self._restores_in_a_row} restores of the step-{self.step} state; "
                    f"lower train.lr (now {self.cfg.train.lr:g}) and restart"
                )

    def _embed_pending(self, refresh: bool = False) -> None:
        """Give newly stored frames their target embedding, which min-redundancy eviction compares;
        with `refresh`, re-embed the stalest ones instead (the encoder has moved since)."""
        batch = self.buffer.frames_to_embed(self.cfg.buffer.embed_batch, refresh=refresh)
        if batch is None:
            return
        slots, tickets, images = batch
        x = torch.nn.functional.interpolate(
            self.train_step.to_input(images), size=self.cfg.model.image_size, mode="bilinear", antialias=True,
            align_corners=False,
        )
        mean = torch.tensor(self.learner.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.learner.std, device=self.device).view(1, 3, 1, 1)
        with self.train_step.autocast:
            vectors = self.learner.embed((x - mean) / std, which="target")
        self.buffer.set_embeddings(slots, tickets, vectors.float().cpu())

    # -- export, metrics, status -----------------------------------------------------------------

    def _make_exporter(self) -> Optional[Exporter]:
        ec = self.cfg.export
        if ec.every_steps is None and ec.every_seconds is None:
            return None
        if self._make_exporter_fn is None:
            log.warning("export.every_steps/every_seconds is set but this trainer was given no exporter; not exporting")
            return None
        return self._make_exporter_fn(tuple(self.learner.mean), tuple(self.learner.std))

    def _export_due(self, last_export_time: float) -> bool:
        ec = self.cfg.export
        if self.exporter is None or self.step == self.counters.last_export_step:
            return False
        by_steps = ec.every_steps is not None and self.step % ec.every_steps == 0
        by_time = ec.every_seconds is not None and time.monotonic() - last_export_time >= ec.every_seconds
        return by_steps or by_time

    def _submit_export(self) -> None:
        """Hand an eval copy of the encoder and real frames to the export thread (returns at once)."""
        gen = torch.Generator().manual_seed(self.step)
        frames, _ = self.buffer.sample(self.cfg.export.verify_batch, gen)
        encoder = self.learner.encoder_module(self.cfg.export.weights)
        self.exporter.submit(self.step, encoder, frames.cpu().numpy())
        self.counters.last_export_step = self.step

    def _log_exports(self) -> None:
        if self.exporter is None:
            return
        for event in self.exporter.poll():
            if event.get("event") == "export":
                self.counters.last_export_version = event["version"]
            self.metrics.log(event)

    def _make_monitor(self) -> Optional["QualityMonitor"]:
        tc = self.cfg.train
        if tc.probe_data is None:
            return None
        from trainer.quality_monitor import QualityMonitor  # sklearn and onnxruntime load only when probing

        return QualityMonitor(tc.probe_data, self.cfg.model, self.cfg.eval, tc.seed, self.learner.mean, self.learner.std)

    def _probe_due(self) -> bool:
        due = self.monitor is not None and self.step % self.cfg.train.probe_every == 0
        return due and self.step != self._probe_submitted_at  # a skipped (NaN) step does not probe twice

    def _log_probes(self, final: bool = False) -> None:
        """Log finished probes; at the end wait for one in progress. A failed probe is logged, never fatal."""
        if self.monitor is None:
            return
        try:
            results = self.monitor.close(EXPORT_CLOSE_TIMEOUT_S) if final else self.monitor.poll()
        except Exception as exc:  # the monitor is advisory: a broken probe must not stop training
            message = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            log.warning("quality probe failed: %s", message)
            self.metrics.log({"event": "probe_failed", "step": self.step, "error": message})
            return
        for result in results:
            self._last_probe = result
            self.metrics.log(result.to_event())

    def _fields(self, window: _Window, state: str) -> dict[str, Any]:
        steps_per_s, img_per_s = window.rates(self.step, self.cfg.train.batch_size)
        stats = self.buffer.stats()
        c = self.counters
        return {
            "step": self.step,
            "state": state,
            "loss": self.train_step.last_loss,
            "embedding_std": _as_float(self.learner.last_stats.get("embedding_std")),
            "lr": self.optimizer.param_groups[0]["lr"],
            "tau": _as_float(self.learner.tau),
            "steps_per_s": steps_per_s,
            "img_per_s": img_per_s,
            "frames_in": c.frames_in,
            "frames_malformed": c.frames_malformed,
            "frames_dropped": c.frames_malformed + c.frames_rejected,
            "connections_refused": c.connections_refused,
            "buffer_fill": stats["fill"],
            "buffer_size": stats["size"],
            "nan_skips": c.nan_skips,
            "restores": c.restores,
            "last_export_version": c.last_export_version,
            "max_steps": self.cfg.train.max_steps,
            "probe_knn": self._last_probe.knn_top1 if self._last_probe else None,
            "probe_random_knn": self._last_probe.random_knn_top1 if self._last_probe else None,
            "probe_step": self._last_probe.step if self._last_probe else None,
        }

    def _status(self, window: _Window, state: str, force: bool = False) -> None:
        if state == "waiting for frames":
            state = f"waiting for frames ({len(self.buffer)}/{self.buffer.min_fill} stored)"
        if force or self.metrics.due():
            self.metrics.status(self._fields(window, state), force=force)

    def _log_metrics(self, window: _Window) -> None:
        fields = self._fields(window, "training")
        fields["loss"] = sum(window.losses) / len(window.losses)
        stats = self.buffer.stats()
        fields.update(
            buffer_evictions=stats["evictions"],
            buffer_age_mean_s=stats["age_mean_s"],
            buffer_age_max_s=stats["age_max_s"],
            buffer_per_camera=stats["per_camera"],
        )
        for key in ("state", "max_steps", "probe_knn", "probe_random_knn", "probe_step"):
            del fields[key]
        self.metrics.log(fields)

    def _shutdown(self) -> None:
        """Final checkpoint, final export, last status line; runs on every exit but a kill -9."""
        try:
            if self.step > self._last_checkpoint_step and self.train_step.nan_streak == 0:
                self._save_checkpoint()
            if self.exporter is not None:
                if self.step > self.counters.last_export_step and len(self.buffer) > 0:
                    self._submit_export()
                self.exporter.close(EXPORT_CLOSE_TIMEOUT_S)
                self._log_exports()
            self._log_probes(final=True)
            window = _Window(self.step)
            self._status(window, "stopped", force=True)
            self.metrics.log({"event": "stop", "step": self.step, **asdict(self.counters)})
        finally:
            self.metrics.close()


def _as_float(value: Any) -> Optional[float]:
    if value is None:
        return None
    return float(value)
