"""The continual trainer: frames stream in on one thread, BYOL updates run on this one, forever.

`ContinualTrainer.run(stop)` is the loop; the parts it composes each have a file of their own:
`TrainStep` (train_step.py: device, seeds, precision, input conversion), `DivergenceGuard` (divergence.py:
NaN skips and restores), `RunState` (run_state.py: counters, RNGs, checkpoints, resume), `RunMonitor`
(run_monitor.py: metrics, status, live line), `ExportHandoff` (export_handoff.py: exporter, probes),
`ReceivedFrames` (received_frames.py: frame counters, ranks' agreement), `BufferEmbeddings`
(buffer_embeddings.py), the `ReplayBuffer` and the `Ingestor` thread.
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

import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, TextIO

import numpy as np
import torch

from agent.core.atomic import remove_stale_temps
from agent.core.config import Config, dump_config
from trainer.buffer import ReplayBuffer
from trainer.buffer_embeddings import BufferEmbeddings
from trainer.checkpoint import checkpoint_dir
from trainer.distributed import SOLO, CollectiveError, Ranks
from trainer.divergence import DivergenceGuard, TrainingDiverged
from trainer.export_handoff import ExportHandoff, MakeExporter
from trainer.ingest import FrameInbox, Ingestor
from trainer.init_weights import load_initial_weights
from trainer.learner_factory import build_learner, build_optimizer
from trainer.metrics import MetricsWriter
from trainer.previews import view_grid
from trainer.received_frames import ReceivedFrames
from trainer.run_monitor import RunMonitor
from trainer.run_state import Counters, RunState
from trainer.sinks import check_sink_names
from trainer.train_step import TrainStep, resolve_device, setup_torch

if TYPE_CHECKING:
    from trainer.quality_monitor import QualityMonitor

# TrainingDiverged: trainer/divergence.py; resolve_device: trainer/train_step.py
__all__ = ["ContinualTrainer", "TrainingDiverged", "resolve_device"]
log = logging.getLogger(__name__)

DRAINED_AFTER_S = 0.5  # replay input counts as exhausted after this long with nothing arriving

# Replay frames each checkpoint carries for an exporter working from checkpoints: its calibration set grows
# from one checkpoint's sample to the next (export/calibration.py), so a bounded sample keeps checkpoints small
# (256 x 96 x 96 x 3 = 7 MB at the default capture size).
CHECKPOINT_EXPORT_FRAMES = 256


def open_monitor(trainer: "ContinualTrainer", stream: Optional[TextIO]) -> RunMonitor:
    """Rank 0's RunMonitor over the trainer's parts: metrics to `metrics.sinks`, the live line to `stream`
    (stderr when None), and, in a multi-rank run, the whole run's figures (`ReceivedFrames.reporting`)."""
    cfg, mc = trainer.cfg, trainer.cfg.metrics
    return RunMonitor(
        MetricsWriter(trainer.run_dir, stream=stream, sinks=mc.sinks, start_step=trainer.step),
        cfg.train,
        train_step=trainer.train_step,
        buffer=trainer.buffer,
        state=trainer.state,
        quality=trainer.quality,
        sync=trainer.frames.sync,
        world_size=trainer.ranks.world_size,
        metrics_cfg=mc,
        preview=trainer._view_grid,
        **trainer.frames.reporting(),
    )


def final_checkpoint(
    state: RunState, train_step: TrainStep, ranks: Ranks, save: Callable[[], None], together: bool
) -> Optional[CollectiveError]:
    """The run's last checkpoint (`save`, unless nothing is unsaved or a NaN streak is open) and, in a
    multi-rank run, the stop record's exact counters; a peer lost during either is returned, not raised.
    Without `together` (the ranks did not leave the loop in step) no collective can run: nothing is saved."""
    lost: Optional[CollectiveError] = None
    if state.unsaved and train_step.nan_streak == 0:
        if together:
            try:
                save()
            except CollectiveError as exc:  # a peer died during the final checkpoint
                lost = exc
        else:
            log.warning(
                "%s: no final checkpoint without the other ranks; the last one is step %d",
                ranks,
                state.last_checkpoint_step,
            )
    if together and not ranks.solo and lost is None:
        try:
            state.gather_counters()  # the stop record's figures, exact
        except CollectiveError as exc:
            lost = exc
    return lost


def start_record(
    step: int, resumed_from: Optional[str], device: torch.device, endpoint: str, ranks: Ranks
) -> dict[str, Any]:
    """The metrics "start" event of a session (logged with its endpoint too in a multi-rank run)."""
    start: dict[str, Any] = {
        "event": "start",
        "step": step,
        "resumed_from": resumed_from,
        "device": str(device),
        "endpoint": endpoint,
    }
    if not ranks.solo:
        start["world_size"] = ranks.world_size
        log.info("%s (pid %d, %s): frames on %s", ranks, os.getpid(), device, endpoint)
    return start


class InputEnd:
    """Whether the input has ended and drained: `input_done` (replay's event), or every camera sent its
    end-of-stream, and nothing has arrived for DRAINED_AFTER_S since; a camera that comes back makes the
    loop wait for its frames again."""

    def __init__(self, ingest: Ingestor, buffer: ReplayBuffer) -> None:
        self._ingest, self._buffer = ingest, buffer
        self._ended_at: Optional[float] = None  # when the input was first seen ended (None: it has not)

    def drained(self, input_done: bool) -> bool:
        ingest = self._ingest
        ended = input_done or ingest.input_ended
        if ended and self._ended_at is None:
            self._ended_at = time.monotonic()
            if ingest.input_ended:
                log.info(
                    "every camera's source has ended (cameras %s); training on the %d frames held",
                    sorted(ingest.cameras_ended),
                    len(self._buffer),
                )
        elif not ended:
            self._ended_at = None  # a camera is back: wait for its frames again
        return (
            self._ended_at is not None
            and ingest.idle_for() > DRAINED_AFTER_S
            and (time.monotonic() - self._ended_at > DRAINED_AFTER_S)
        )


def prepare_run_dir(run_dir: Path, cfg: Optional[Config]) -> None:
    """Create `run_dir`, delete temp files a killed predecessor left there, and write `cfg` (when given) as
    config.yaml, a record for people (a failure to write it is logged, not raised)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for folder in (run_dir, checkpoint_dir(run_dir)):
        remove_stale_temps(folder)  # what a killed predecessor was writing
    if cfg is not None:
        try:
            dump_config(cfg, run_dir / "config.yaml")
        except OSError as exc:  # a record for people, not needed to train
            log.warning("config.yaml not written: %s", exc.strerror or exc)


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
        make_exporter: Optional[MakeExporter] = None,
        lossless: bool = False,
        write_config: bool = True,
        stream: Optional[TextIO] = None,
        ranks: Ranks = SOLO,
    ) -> None:
        self.cfg = cfg
        self.ranks = ranks
        check_sink_names(cfg.metrics.sinks)  # every rank, so a bad name stops them all at start
        self._open_receiver = open_receiver
        self.run_dir = Path(run_dir)
        self.lossless = lossless
        self._write_config = write_config
        self._stream = stream
        tc = cfg.train
        self.device, seed = setup_torch(tc, ranks)
        self.learner = build_learner(
            cfg.model, tc, self.device, cfg.augment, channels=cfg.capture.channels, rank=ranks.rank
        )
        self.optimizer = build_optimizer(self.learner, tc)
        self.train_step = TrainStep(self.learner, self.optimizer, tc, self.device, ranks)
        self.compute_lock = threading.Lock()  # a training step, or one batch of the probe's forward passes
        frame_shape = (cfg.capture.height, cfg.capture.width, cfg.capture.channels)
        self.buffer = ReplayBuffer(cfg.buffer, frame_shape, self.device, seed=seed)
        self.sampler = torch.Generator().manual_seed(seed)
        ec, record = cfg.export, cfg.model_dump(mode="json")  # checkpoints carry frames for `run`'s exporter
        frames = max(ec.verify_batch, min(ec.calibration_frames, CHECKPOINT_EXPORT_FRAMES))
        self.state = RunState(self.run_dir, tc, self.train_step, self.buffer, self.sampler, record, ranks, frames)
        self.state.resume()
        if self.resumed_from is None:  # a new run: from model.init_weights (or torchvision weights) when named
            load_initial_weights(self.learner, cfg.model)
        self.publishing = ExportHandoff(
            cfg,
            self.learner,
            self.buffer,
            self.state,
            ranks,
            make_exporter,
            self.compute_lock,
            self.device,
            self.train_step.set_snapshot_once if tc.distill_snapshot == "first_published" else lambda make: None,
        )
        self.frames = ReceivedFrames(self.state, self.buffer, ranks, lambda: self.step, tc.replay_ratio)
        self.embeddings = BufferEmbeddings(self.buffer, self.train_step, cfg.buffer, cfg.model.image_size)
        self.divergence = DivergenceGuard(self.train_step, tc, self.state, self._event)
        if tc.distill_snapshot == "session_start" and self.resumed_from is not None:
            self.train_step.set_snapshot_once(self.publishing.probed_encoder)  # CaSSLe: the previous room's encoder
        self.train_step.mark_good()
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

    @property
    def quality(self) -> Optional["QualityMonitor"]:
        return self.publishing.quality

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
            prepare_run_dir(self.run_dir, self.cfg if self._write_config else None)
        receiver = self._open_receiver()
        self._prior_step = self.step
        self.ingest = self.frames.open_ingest(receiver, lossless=self.lossless)
        self._input_end = InputEnd(self.ingest, self.buffer)
        try:
            self.monitor = open_monitor(self, self._stream) if writes else None
            self.publishing.open(self.monitor)
        except BaseException:  # the ingest thread that would close the receiver never started
            receiver.close()
            raise
        self._event(start_record(self.step, self.resumed_from, self.device, receiver.endpoint, self.ranks))
        self.ingest.start()
        together = self.ranks.solo  # a multi-rank final checkpoint needs every rank to have left the loop in step
        try:
            if on_bound is not None:
                on_bound(receiver.endpoint)
            self._loop(stop, input_done)
            together = True
        finally:
            self.ingest.stop()
            self.frames.sync()
            shut_down(self, together)
        self.ingest.check()
        return 0

    def _loop(self, stop: threading.Event, input_done: Optional[threading.Event]) -> None:
        tc = self.cfg.train
        while True:
            self.frames.sync()
            self.publishing.poll(self._event)
            drained = self._input_end.drained(input_done is not None and input_done.is_set())
            turn = self.frames.agree(stop.is_set(), drained)  # the one collective of a turn in a multi-rank run
            if turn.stop:
                break
            if tc.max_steps is not None and self.step >= tc.max_steps:
                break
            self.embeddings.embed_new()
            if not turn.may_step(self.step, tc.replay_ratio):
                if turn.drained:
                    break
                self._status(turn.waiting(self.buffer.min_fill))
                self.ingest.wait_for_frames(0.1)
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
            self.embeddings.refresh(self.step)
            self.publishing.stepped()
            if self.monitor is not None:
                self.monitor.maybe_probe(self.counters.last_export_version, self.publishing.probed_encoder)
            self._status("training")

    def _train_step(self) -> Optional[float]:
        """One BYOL update; None when the loss was not finite (step skipped and counted)."""
        images, partners = self.buffer.sample(self.cfg.train.batch_size, self.sampler)
        with self.compute_lock:  # the probe's forward passes take turns with steps (trainer/quality_monitor.py)
            value = self.train_step(images, partners)
        if value is None:
            self.divergence.nonfinite()
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

    def _save_checkpoint(self) -> None:
        """A checkpoint of now; once written it is also the state a NaN streak falls back to.
        A collective in a multi-rank run (rank 0 writes, every rank learns whether it was written)."""
        if self.state.save(self.monitor.event if self.monitor is not None else None):
            self.divergence.progressed()
            self.publishing.checkpointed()


def shut_down(trainer: ContinualTrainer, together: bool) -> None:
    """Final checkpoint, final export, last status line; runs on every exit of `trainer.run` but a kill -9.

    `together`: every rank left the loop at the same turn (always so for a single process), so the
    final checkpoint's collective can run; otherwise (a peer is gone, an error on this rank) no
    checkpoint can be written and the last one stays the one to resume from."""
    lost: Optional[CollectiveError] = None
    try:
        lost = final_checkpoint(trainer.state, trainer.train_step, trainer.ranks, trainer._save_checkpoint, together)
        trainer.publishing.close(trainer._event)
        if trainer.train_step.nan_streak == 0 and trainer.step > trainer._prior_step:
            # the state the run ends with (waits for a probe in progress)
            trainer.publishing.probe_published(final=True)
    finally:
        if trainer.monitor is not None:
            trainer.monitor.close()
    if lost is not None:
        raise lost
