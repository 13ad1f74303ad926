"""The continual trainer: frames stream in on one thread, BYOL updates run on this one, forever.

`ContinualTrainer.run(stop)` is the loop; the parts it composes each have a file of their own:
`TrainStep` (trainer/train_step.py: device, precision, input conversion, NaN guard), `RunState`
(trainer/run_state.py: counters, RNGs, checkpoints, resume), `RunMonitor` (trainer/run_monitor.py:
metrics, status file, live line, quality probes), the `ReplayBuffer` and the `Ingestor` thread.
Training starts once the buffer holds `buffer.min_fill` frames and never runs more than
`train.replay_ratio` updates per frame ingested, so a stalled camera does not turn into
overfitting on a frozen buffer. A non-finite loss skips its step; `train.nan_tolerance` in a row
restore the last good state. Every exit that is not a kill -9 (max steps, SIGINT/SIGTERM, drained
replay input, an error) ends with a checkpoint from which a restart continues exactly.

Under torchrun (`ranks`, trainer/distributed.py) one trainer runs per rank, each on its own frame
inbox and replay-buffer shard, with the learner under DDP. The ranks agree on everything collective
through one small all_reduce per loop turn (trainer/lockstep.py): start, the replay-ratio gate over
the fleet's frames, stop, drain and checkpoints happen at the same step everywhere. Rank 0 alone
writes into the run directory (checkpoints, metrics to each of `metrics.sinks`, status, config) and
runs the exporter and the quality probes. A rank whose peer is gone cannot checkpoint and stops with
a one-line error (`CollectiveError`); every other exit of a multi-rank run checkpoints as above.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, TextIO

import numpy as np
import torch

from agent.core import cadence
from agent.core.atomic import remove_stale_temps
from agent.core.config import Config, TrainConfig, dump_config
from agent.core.errors import ByolAgentError, ConfigError
from trainer.buffer import ReplayBuffer
from trainer.build import build_learner, build_optimizer
from trainer.init_weights import load_initial_weights
from trainer.checkpoint import checkpoint_dir
from trainer.distributed import SOLO, CollectiveError, Ranks
from trainer.ingest import FrameInbox, Ingestor
from trainer.lockstep import RankCounts, RankFacts, Turn, agree
from trainer.metrics import MetricsWriter
from trainer.previews import view_grid
from trainer.run_monitor import RunMonitor
from trainer.run_state import RECEIVED, Counters, RunState
from trainer.sinks import check_sink_names
from trainer.train_step import TrainStep

if TYPE_CHECKING:
    from trainer.quality_monitor import QualityMonitor

log = logging.getLogger(__name__)

MAX_RESTORES_WITHOUT_PROGRESS = 3  # restores with no checkpoint between them: the run diverges, stop
DRAINED_AFTER_S = 0.5  # replay input counts as exhausted after this long with nothing arriving
EXPORT_CLOSE_TIMEOUT_S = 120.0
# Replay frames each checkpoint carries for an exporter working from checkpoints: its calibration set grows
# from one checkpoint's sample to the next (export/compat.py), so a bounded sample keeps checkpoints small
# (256 x 96 x 96 x 3 = 7 MB at the default capture size).
CHECKPOINT_EXPORT_FRAMES = 256


class TrainingDiverged(ByolAgentError):
    """The loss stays non-finite even from the last good state."""


def resolve_device(train_cfg: TrainConfig) -> torch.device:
    """CUDA when there is one (or when asked for, which fails clearly without one), else the CPU."""
    if train_cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")
    if train_cfg.device == "cuda" or (train_cfg.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


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
    `ranks`: this process's place in a multi-rank run (joined by the caller before building the
    trainer, so the heads' BatchNorm syncs across ranks); `SOLO` for a single process.
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
        ranks: Ranks = SOLO,
    ) -> None:
        self.cfg = cfg
        self.ranks = ranks
        check_sink_names(cfg.metrics.sinks)  # every rank, so a bad name stops them all at start
        self._open_receiver = open_receiver
        self._make_exporter_fn = make_exporter
        self.run_dir = Path(run_dir)
        self.lossless = lossless
        self._write_config = write_config
        self._stream = stream
        tc = cfg.train
        if tc.threads is not None:
            torch.set_num_threads(tc.threads)
        self.device = resolve_device(tc) if ranks.solo else ranks.device
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed batch and image size: autotuned kernels pay off
        seed = tc.seed + ranks.rank  # each rank its own RNGs, batches and views; the weights start from tc.seed
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        self.learner = build_learner(cfg.model, tc, self.device, cfg.augment, channels=cfg.capture.channels, rank=ranks.rank)
        self.optimizer = build_optimizer(self.learner, tc)
        self.train_step = TrainStep(self.learner, self.optimizer, tc, self.device, ranks)
        self.compute_lock = threading.Lock()  # a training step, or one batch of the probe's forward passes
        self.buffer = ReplayBuffer(cfg.buffer, (cfg.capture.height, cfg.capture.width, cfg.capture.channels), self.device, seed=seed)
        self.sampler = torch.Generator().manual_seed(seed)
        ec = cfg.export  # checkpoints carry frames for an exporter that works from them (`run`)
        self.state = RunState(self.run_dir, tc, self.train_step, self.buffer, self.sampler, cfg.model_dump(mode="json"), ranks,
                              export_frames=max(ec.verify_batch, min(ec.calibration_frames, CHECKPOINT_EXPORT_FRAMES)))
        self.state.resume()
        if self.resumed_from is None:  # a new run: from model.init_weights (or torchvision weights) when named
            load_initial_weights(self.learner, cfg.model)
        self.quality = self._make_quality_monitor()
        self.train_step.mark_good()
        self._restores_in_a_row = 0
        self._turn: Optional[Turn] = None  # the last agreed turn (multi-rank runs report the fleet's figures from it)
        self.monitor: Optional[RunMonitor] = None  # rank 0's; other ranks write nothing into the run directory

    @property
    def step(self) -> int:
        return int(self.learner.step)

    @property
    def counters(self) -> Counters:
        return self.state.counters

    @property
    def resumed_from(self) -> Optional[str]:
        return self.state.resumed_from

    # -- the loop ----------------------------------------------------------------------------

    def run(
        self,
        stop: threading.Event,
        input_done: Optional[threading.Event] = None,
        on_bound: Optional[Callable[[str], None]] = None,
    ) -> int:
        """Train until `stop` is set, `train.max_steps` is reached, or the input has ended and is drained:
        `input_done` set, or every camera sent its end-of-stream. Ended input is trained on even below
        `buffer.min_fill` (two frames suffice), up to `train.replay_ratio` updates per frame, then the run stops.

        `on_bound(endpoint)` is called once frames can be received, with the endpoint actually bound
        (a `tcp://HOST:*` config picks a free port). Returns 0; raises what `open_receiver` raises (an
        EndpointError for an endpoint that cannot be bound), and re-raises an ingest-thread failure
        after the final checkpoint. In a multi-rank run every rank calls it; a CollectiveError means
        a peer is gone and this rank stopped without a final checkpoint.
        """
        writes = self.ranks.rank == 0
        if writes:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for folder in (self.run_dir, checkpoint_dir(self.run_dir)):
                remove_stale_temps(folder)  # what a killed predecessor was writing
            if self._write_config:
                try:
                    dump_config(self.cfg, self.run_dir / "config.yaml")
                except OSError as exc:  # a record for people, not needed to train
                    log.warning("config.yaml not written: %s", exc.strerror or exc)
        receiver = self._open_receiver()
        self._prior = copy.deepcopy(self.counters)
        self._prior_step = self.step
        self.ingest = Ingestor(receiver, self.buffer, self._may_take if self.lossless else None)
        try:
            if writes:
                mc = self.cfg.metrics
                self.monitor = RunMonitor(
                    MetricsWriter(self.run_dir, stream=self._stream, sinks=mc.sinks, start_step=self.step),
                    self.cfg.train, train_step=self.train_step, buffer=self.buffer, state=self.state,
                    quality=self.quality, sync=self._sync_counters, world_size=self.ranks.world_size,
                    metrics_cfg=mc, preview=self._view_grid, **self._fleet_reporting(),
                )
            self.exporter = self._make_exporter()
        except BaseException:  # the ingest thread that would close the receiver never started
            receiver.close()
            raise
        start = {"event": "start", "step": self.step, "resumed_from": self.resumed_from,
                 "device": str(self.device), "endpoint": receiver.endpoint}
        if not self.ranks.solo:
            start["world_size"] = self.ranks.world_size
            log.info("%s (pid %d, %s): frames on %s", self.ranks, os.getpid(), self.device, receiver.endpoint)
        self._event(start)
        self.ingest.start()
        together = self.ranks.solo  # a multi-rank final checkpoint needs every rank to have left the loop in step
        try:
            if on_bound is not None:
                on_bound(receiver.endpoint)
            self._loop(stop, input_done)
            together = True
        finally:
            self.ingest.stop()
            self._sync_counters()
            self._shutdown(together)
        self.ingest.check()
        return 0

    def _loop(self, stop: threading.Event, input_done: Optional[threading.Event]) -> None:
        tc = self.cfg.train
        last_export_time: Optional[float] = None  # the clock starts at this session's first step (not at start-up,
        # which under load can take longer than export.every_seconds and would publish a nearly untrained version)
        input_done_at: Optional[float] = None
        while True:
            self._sync_counters()
            self._log_exports()
            ended = (input_done is not None and input_done.is_set()) or self.ingest.input_ended
            if ended and input_done_at is None:
                input_done_at = time.monotonic()
                if self.ingest.input_ended:
                    log.info("every camera's source has ended (cameras %s); training on the %d frames held",
                             sorted(self.ingest.cameras_ended), len(self.buffer))
            elif not ended:
                input_done_at = None  # a camera is back: wait for its frames again
            drained = input_done_at is not None and self.ingest.idle_for() > DRAINED_AFTER_S and (
                time.monotonic() - input_done_at > DRAINED_AFTER_S
            )
            turn = self._agree(stop, drained)  # the one collective of a turn in a multi-rank run
            if turn.stop:
                break
            if tc.max_steps is not None and self.step >= tc.max_steps:
                break
            if self.buffer.wants_embeddings:
                self._embed_pending()
            if not turn.may_step(self.step, tc.replay_ratio):
                if turn.drained:
                    break
                self._status(turn.waiting(self.buffer.min_fill))
                self.ingest.arrived.wait(0.1)
                self.ingest.arrived.clear()
                continue
            loss = self._train_step()
            self.ingest.wake()
            if not self.ranks.solo and loss is not None and self.step % tc.metrics_every == 0:
                self.state.gather_counters()  # the run's frames per camera for rank 0's metrics record
            if self.monitor is not None:
                self.monitor.stepped(loss)
            clear = None if self.ranks.solo else turn.checkpoint_clear
            if self.train_step.nan_streak == 0 and self.state.checkpoint_due(clear):
                self._save_checkpoint()
            refresh = self.cfg.buffer.refresh_every_steps
            if self.buffer.wants_embeddings and refresh is not None and self.step % refresh == 0:
                self._embed_pending(refresh=True)
            if self._export_due(last_export_time):
                self._submit_export()
                last_export_time = time.monotonic()
            elif last_export_time is None:
                last_export_time = time.monotonic()
            if self.monitor is not None:
                self.monitor.maybe_probe(self.counters.last_export_version, self._probed_encoder)
            self._status("training")

    def _agree(self, stop: threading.Event, drained: bool) -> Turn:
        """This turn's decisions, from every rank's facts (its own alone in a single process).

        A failed ingest thread votes to stop, so that every rank leaves the loop together; its error
        is raised after the final checkpoint (`run`)."""
        stored = len(self.buffer)
        c = self.counters
        facts = RankFacts(
            stop=stop.is_set() or self.ingest.error is not None,
            ready=stored >= self.buffer.min_fill or (drained and stored >= 2),
            drained=drained,
            checkpoint_clear=self.state.retry_passed(),
            counts=RankCounts(c.frames_in, c.frames_malformed, c.frames_rejected, c.connections_refused, stored),
        )
        self._turn = agree(self.ranks, facts)
        if not self.ranks.solo:
            self.state.fleet = replace(self.state.fleet, **{name: self._turn.total(name) for name in RECEIVED})
        return self._turn

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
        received = dict(ing.per_camera)  # a copy: the ingest thread adds cameras
        c.frames_per_camera = {cam: p.frames_per_camera.get(cam, 0) + received.get(cam, 0)
                               for cam in set(p.frames_per_camera) | set(received)}

    def _train_step(self) -> Optional[float]:
        """One BYOL update; None when the loss was not finite (step skipped and counted)."""
        images, partners = self.buffer.sample(self.cfg.train.batch_size, self.sampler)
        with self.compute_lock:  # the probe's forward passes take turns with steps (trainer/quality_monitor.py)
            value = self.train_step(images, partners)
        if value is None:
            self._on_nonfinite()
        return value

    def _view_grid(self) -> Optional[np.ndarray]:
        """A few buffer frames and their two views (trainer/previews.py), for the sinks that show images."""
        return view_grid(self.learner, self.buffer, self.train_step.to_input, self.cfg.metrics.image_frames, self.step)

    def _event(self, record: dict[str, Any]) -> None:
        if self.monitor is not None:
            self.monitor.event(record)

    def _status(self, state: str) -> None:
        if self.monitor is not None:
            self.monitor.status(state)

    def _fleet_reporting(self) -> dict[str, Any]:
        """RunMonitor's options that make rank 0 of a multi-rank run report the whole run, not itself."""
        if self.ranks.solo:
            return {}
        return {"counters": self._reported_counters, "extra": self._per_rank_fields}

    def _reported_counters(self) -> Counters:
        """Rank 0's counters with the frames every rank received (as of the last turn; per camera as of the
        last gather, at each metrics record and checkpoint)."""
        fleet = self.state.fleet
        received = {name: getattr(fleet, name) for name in RECEIVED}
        return replace(self.counters, **received, frames_per_camera=dict(fleet.frames_per_camera))

    def _per_rank_fields(self) -> dict[str, Any]:
        turn = self._turn
        if turn is None:
            return {"world_size": self.ranks.world_size}
        return {
            "world_size": turn.world_size,
            "frames_in_per_rank": [counts.frames_in for counts in turn.ranks],
            "buffer_fill_per_rank": [counts.stored / self.buffer.capacity for counts in turn.ranks],
        }

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
            self._event({"event": "restore", "from_step": bad_step, "step": self.step,
                         "restores": self.counters.restores, "nan_skips": self.counters.nan_skips})
            if self._restores_in_a_row >= MAX_RESTORES_WITHOUT_PROGRESS:
                raise TrainingDiverged(
                    f"loss stays non-finite after {self._restores_in_a_row} restores of the step-{self.step} state; "
                    f"lower train.lr (now {self.cfg.train.lr:g}) and restart"
                )

    def _save_checkpoint(self) -> None:
        """A checkpoint of now; once written it is also the state a NaN streak falls back to.
        A collective in a multi-rank run (rank 0 writes, every rank learns whether it was written)."""
        if self.state.save(self.monitor.event if self.monitor is not None else None):
            self.train_step.mark_good()
            self._restores_in_a_row = 0
            if self.exporter is None:  # `run`'s exporter process publishes each checkpoint: score what it gets
                self.train_step.set_snapshot_once(self._probed_encoder)  # train.compat_distill: towards version 1
                self._probe_published()

    def _embed_pending(self, refresh: bool = False) -> None:
        """Give newly stored frames their target embedding, which min-redundancy eviction compares;
        with `refresh`, re-embed the stalest ones instead (the encoder has moved since)."""
        batch = self.buffer.frames_to_embed(self.cfg.buffer.embed_batch, refresh=refresh)
        if batch is not None:
            slots, tickets, images = batch
            self.buffer.set_embeddings(slots, tickets, self.train_step.embed(images, self.cfg.model.image_size))

    # -- publishing ------------------------------------------------------------------------------

    def _make_exporter(self) -> Optional[Exporter]:
        ec = self.cfg.export
        if (ec.every_steps is None and ec.every_seconds is None) or self.ranks.rank != 0:
            return None
        if self._make_exporter_fn is None:
            log.warning("export.every_steps/every_seconds is set but this trainer was given no exporter; not exporting")
            return None
        return self._make_exporter_fn(tuple(self.learner.mean), tuple(self.learner.std))

    def _export_due(self, last_export_time: Optional[float]) -> bool:
        """agent.core.cadence's rule, the one `export --watch` follows too (the last export's step; its time,
        or this session's first step: None before it)."""
        ec = self.cfg.export
        if self.exporter is None:
            return False
        since = 0.0 if last_export_time is None else time.monotonic() - last_export_time
        return cadence.due(self.step, self.counters.last_export_step, ec.every_steps, since, ec.every_seconds)

    def _submit_export(self) -> None:
        """Hand an eval copy of the encoder and real frames to the export thread (returns at once)."""
        gen = torch.Generator().manual_seed(self.step)
        ec = self.cfg.export  # enough frames to verify, and distinct ones to grow the exporter's calibration set from
        frames, _ = self.buffer.sample(max(ec.verify_batch, min(ec.calibration_frames, len(self.buffer))), gen)
        encoder = self.learner.encoder_module(self.cfg.export.weights)
        self.train_step.set_snapshot_once(lambda: encoder)  # train.compat_distill: the first version published
        self.exporter.submit(self.step, encoder, frames.cpu().numpy())
        self.counters.last_export_step = self.step
        self._probe_published()

    def _log_exports(self) -> None:
        if self.exporter is None:
            return
        for event in self.exporter.poll():
            if event.get("event") == "export":
                self.counters.last_export_version = event["version"]
            self._event(event)

    def _probed_encoder(self) -> torch.nn.Module:
        return self.learner.encoder_module(self.cfg.export.weights)

    def _probe_published(self, final: bool = False) -> None:
        """Probe the state just checkpointed or exported, or with `final` the one the run ends with (unless
        `train.probe_every` sets a step cadence): the report matches a score to the version of its step."""
        if self.monitor is not None and self.cfg.train.probe_every is None:
            self.monitor.probe(self.counters.last_export_version, self._probed_encoder, final=final)

    def _make_quality_monitor(self) -> Optional["QualityMonitor"]:
        tc = self.cfg.train
        if tc.probe_data is None or self.ranks.rank != 0:
            return None
        from trainer.quality_monitor import QualityMonitor  # sklearn and onnxruntime load only when probing

        return QualityMonitor(tc.probe_data, self.cfg.model, self.cfg.eval, tc.seed, self.learner.mean, self.learner.std,
                              device=self.device, weights=self.cfg.export.weights, compute_lock=self.compute_lock)

    def _shutdown(self, together: bool) -> None:
        """Final checkpoint, final export, last status line; runs on every exit but a kill -9.

        `together`: every rank left the loop at the same turn (always so for a single process), so the
        final checkpoint's collective can run; otherwise (a peer is gone, an error on this rank) no
        checkpoint can be written and the last one stays the one to resume from."""
        lost: Optional[CollectiveError] = None
        try:
            if self.state.unsaved and self.train_step.nan_streak == 0:
                if together:
                    try:
                        self._save_checkpoint()
                    except CollectiveError as exc:  # a peer died during the final checkpoint
                        lost = exc
                else:
                    log.warning("%s: no final checkpoint without the other ranks; the last one is step %d",
                                self.ranks, self.state.last_checkpoint_step)
            if together and not self.ranks.solo and lost is None:
                try:
                    self.state.gather_counters()  # the stop record's figures, exact
                except CollectiveError as exc:
                    lost = exc
            if self.exporter is not None:
                if self.step > self.counters.last_export_step and len(self.buffer) > 0:
                    self._submit_export()
                self.exporter.close(EXPORT_CLOSE_TIMEOUT_S)
                self._log_exports()
            if self.train_step.nan_streak == 0 and self.step > self._prior_step:
                self._probe_published(final=True)  # the state the run ends with (waits for a probe in progress)
        finally:
            if self.monitor is not None:
                self.monitor.close()
        if lost is not None:
            raise lost
