"""What a person and the `run` supervisor see of a continual run: metrics, status, live line, probes.

`RunMonitor` reads the run's parts (the train step, the replay buffer, the counters of its
`RunState`) and reports them; it never changes them. Each metrics window (`train.metrics_every`
steps) becomes one `metrics.jsonl` record with the mean loss and the throughput of that window;
the status file and the live line are refreshed at their own pace by `MetricsWriter`. Every
`metrics.images_every_steps` steps, when a sink shows pictures, it sends the grid `preview()` makes
(trainer/previews.py: a few buffer frames and their two views). With a `QualityMonitor`
(`train.probe_data`), it also submits the kNN probes of the encoder (at each checkpoint or export,
or every `train.probe_every` steps) and logs their results; a failed probe is logged, never fatal.
A probe more than 0.02 below its best, or an embedding std below half its peak, becomes a warning
(trainer/health.py): a "health" record when it starts and clears, and the status's "warnings" meanwhile.
Handed the `train` and `metrics` sections.
Rank 0 of a multi-rank run reports the whole run: the trainer hands in the run's counters and
per-rank fields (`counters`, `extra`) in place of this process's own.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np
from torch import nn

from agent.core.backoff import worth_logging
from agent.core.config import MetricsConfig, TrainConfig
from trainer.buffer import ReplayBuffer
from trainer.health import HealthWatch
from trainer.metrics import MetricsWriter
from trainer.run_state import Counters, RunState
from trainer.train_step import TrainStep

if TYPE_CHECKING:
    from trainer.feature_probes import EvalResult
    from trainer.quality_monitor import QualityMonitor

log = logging.getLogger(__name__)

PROBE_CLOSE_TIMEOUT_S = 120.0
RATE_WINDOW_S = 10.0  # the status line's steps/s and images/s average over this
# Fields of the status that a metrics record leaves out
STATUS_ONLY = (
    "state",
    "max_steps",
    "probe_knn",
    "probe_random_knn",
    "probe_step",
    "cka_prev",
    "cka_pinned",
    "warnings",
)


class _Window:
    """Losses and throughput between two metric records."""

    def __init__(self, step: int) -> None:
        self.start_step = step
        self.start_time = time.monotonic()
        self.losses: list[float] = []

    def rates(self, step: int, images_per_step: int) -> tuple[Optional[float], Optional[float]]:
        """(steps/s, images/s) since the window opened, or (None, None) before its first step."""
        elapsed = time.monotonic() - self.start_time
        if step <= self.start_step or elapsed <= 0:
            return None, None
        steps_per_s = (step - self.start_step) / elapsed
        return steps_per_s, steps_per_s * images_per_step


class StepRate:
    """Steps per second over the last `window_s` seconds of samples, for the status line.

    Unlike a metrics window (which restarts every `train.metrics_every` steps and has no rate until
    its first step), this always has a value once two samples lie `min_span_s` apart, and it falls
    to 0 while training waits instead of flipping to "-".
    """

    def __init__(
        self, window_s: float = RATE_WINDOW_S, min_span_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._window_s, self._min_span_s, self._clock = window_s, min_span_s, clock
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def update(self, step: int) -> Optional[float]:
        """Record `step` now; the rate over the window (None until samples span `min_span_s`)."""
        now = self._clock()
        self._samples.append((now, step))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self._window_s:
            self._samples.popleft()
        t0, s0 = self._samples[0]
        return (step - s0) / (now - t0) if now - t0 >= self._min_span_s else None


class RunMonitor:
    """Reports a run through `metrics`; see the module docstring."""

    def __init__(
        self,
        metrics: MetricsWriter,
        train_cfg: TrainConfig,
        *,
        train_step: TrainStep,
        buffer: ReplayBuffer,
        state: RunState,
        quality: Optional["QualityMonitor"] = None,
        sync: Callable[[], None] = lambda: None,
        counters: Optional[Callable[[], Counters]] = None,
        extra: Callable[[], dict[str, Any]] = dict,
        world_size: int = 1,
        metrics_cfg: MetricsConfig = MetricsConfig(),
        preview: Optional[Callable[[], Optional[np.ndarray]]] = None,
    ) -> None:
        """`sync()` brings the state's counters up to date with the ingest thread; it is called after the
        buffer is read, so the frames counted in are never fewer than the frames the buffer was seen holding.
        `counters()`: the counters to report (default: the state's); `extra()`: fields added to every
        status and metrics record (a multi-rank run's per-rank figures). `world_size`: ranks each taking a
        batch per step, so img_per_s counts the whole run's images. `preview()`: the image grid to show
        every `metrics_cfg.images_every_steps` steps (None: no grid)."""
        self.metrics, self._cfg = metrics, train_cfg
        self._train_step, self._buffer, self._state = train_step, buffer, state
        self.quality = quality
        self._sync = sync
        self._counters = counters if counters is not None else lambda: state.counters
        self._extra = extra
        self._images_per_step = train_cfg.batch_size * world_size
        self._window = _Window(state.step)
        self._rate = StepRate()
        self._frames_in_at_start = self._counters().frames_in  # frames in before this process (a resumed run)
        self._last_probe: Optional["EvalResult"] = None
        # a falling probe or a collapsing embedding: warnings (trainer/health.py)
        self._health = HealthWatch(train_cfg.warn_knn_drop, train_cfg.warn_std_fraction)
        self._probe_submitted_at: Optional[int] = None
        self._probe_submitted_time = -float("inf")  # time.monotonic() of the last probe submitted
        self._drift: dict[str, Any] = {}  # the last published version's drift (export.drift_gate.drift_record)
        self._images_every = metrics_cfg.images_every_steps if preview is not None and metrics.shows_images else None
        self._preview = preview
        self._preview_failures = 0

    def event(self, record: dict[str, Any]) -> None:
        """Send one record to the metrics sinks (a lost record on a full disk is counted, never raised);
        an "export" record's drift figures (cka_prev, cka_pinned) go into the status from then on."""
        if record.get("event") == "export":
            self._drift = {key: record.get(key) for key in ("cka_prev", "cka_pinned")}
        self.metrics.log(record)

    def stepped(self, loss: Optional[float]) -> None:
        """After each update: add its loss (None: skipped) and close the window every `train.metrics_every` steps."""
        if loss is not None:
            self._window.losses.append(loss)
        if self._state.step % self._cfg.metrics_every == 0 and self._window.losses:
            fields = self._fields("training")
            fields["loss"] = sum(self._window.losses) / len(self._window.losses)
            stats = self._buffer.stats()
            fields.update(
                buffer_evictions=stats["evictions"],
                buffer_age_mean_s=stats["age_mean_s"],
                buffer_age_max_s=stats["age_max_s"],
                buffer_per_camera=stats["per_camera"],
                frames_per_camera=dict(self._counters().frames_per_camera),  # received, by camera id
            )
            for key in STATUS_ONLY:
                del fields[key]
            self.metrics.log(fields)
            self._health_record(self._health.embedding(self._state.step, fields["embedding_std"]))
            self._window = _Window(self._state.step)
        if loss is not None and self._images_every is not None and self._state.step % self._images_every == 0:
            self._show_views()

    def _show_views(self) -> None:
        """Send the preview grid to the sinks; a failure is logged (1st and every 100th), never fatal."""
        try:
            grid = self._preview() if self._preview is not None else None
        except Exception as exc:  # a picture for people: it must not stop training
            self._preview_failures += 1
            message = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            if worth_logging(self._preview_failures):
                log.warning("view grid not made (%d so far): %s", self._preview_failures, message)
            return
        if grid is not None:
            self.metrics.image("views", self._state.step, grid)

    def status(self, state: str, force: bool = False) -> None:
        """Refresh the status file and live line (when due, or now with `force`) with `state` ("training", ...)."""
        if state == "waiting for frames":
            state = f"waiting for frames ({len(self._buffer)}/{self._buffer.min_fill} stored)"
        if force or self.metrics.due():
            fields = self._fields(state)
            steps_per_s = self._rate.update(self._state.step)
            fields["steps_per_s"] = steps_per_s
            fields["img_per_s"] = None if steps_per_s is None else steps_per_s * self._images_per_step
            self.metrics.status(fields, force=force)

    # -- quality probes ---------------------------------------------------------------------------

    def maybe_probe(self, version: Optional[int], encoder: Callable[[], nn.Module]) -> None:
        """After each update: with `train.probe_every` set, hand `encoder()` (a CPU eval copy) to the quality
        monitor every that many steps; log finished results either way."""
        every = self._cfg.probe_every
        if every is not None and self._state.step % every == 0:
            self.probe(version, encoder)
        self._log_probes()

    def probe(self, version: Optional[int], encoder: Callable[[], nn.Module], final: bool = False) -> None:
        """Score the current state now (a checkpoint, an export, the end), unless this step was submitted
        already (a skipped NaN step leaves the count where it was) or, unless `final`, a probe still runs
        or the last one began less than `train.probe_min_interval_s` ago."""
        step, now = self._state.step, time.monotonic()
        if self.quality is None or step == self._probe_submitted_at:
            return
        if not final and (self.quality.busy or now - self._probe_submitted_time < self._cfg.probe_min_interval_s):
            return
        self.quality.submit(step, version, encoder(), wait=final)
        self._probe_submitted_at, self._probe_submitted_time = step, now

    def _log_probes(self, final: bool = False) -> None:
        """Log finished probes; at the end wait for one in progress. A failed probe is logged, never fatal."""
        if self.quality is None:
            return
        try:
            results = self.quality.close(PROBE_CLOSE_TIMEOUT_S) if final else self.quality.poll()
        except Exception as exc:  # the monitor is advisory: a broken probe must not stop training
            message = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            log.warning("quality probe failed: %s", message)
            self.metrics.log({"event": "probe_failed", "step": self._state.step, "error": message})
            return
        for result in results:
            self._last_probe = result
            self.metrics.log(result.to_event())
            self._health_record(
                self._health.probe(result.step if result.step is not None else self._state.step, result.knn_top1)
            )

    def _health_record(self, record: Optional[dict[str, Any]]) -> None:
        """Log a warning that starts (or clears) and send its record to the sinks."""
        if record is None:
            return
        (log.warning if record["active"] else log.info)("%s (step %d)", record["message"], record["step"])
        self.metrics.log(record)

    # -- the end ------------------------------------------------------------------------------------

    def close(self) -> None:
        """Wait for a probe in progress, write the final status and the stop record, close the files."""
        try:
            self._log_probes(final=True)
            self._window = _Window(self._state.step)
            self.status("stopped", force=True)
            self.metrics.log({"event": "stop", "step": self._state.step, **asdict(self._counters())})
        finally:
            self.metrics.close()

    def _fields(self, state: str) -> dict[str, Any]:
        step = self._state.step
        steps_per_s, img_per_s = self._window.rates(step, self._images_per_step)
        stats = self._buffer.stats()
        self._sync()
        learner, c, probe = self._train_step.learner, self._counters(), self._last_probe
        return {
            "step": step,
            "state": state,
            "loss": self._train_step.last_loss,
            "embedding_std": _as_float(learner.last_stats.get("embedding_std")),
            "lr": self._train_step.optimizer.param_groups[0]["lr"],
            "tau": _as_float(learner.tau),
            "steps_per_s": steps_per_s,
            "img_per_s": img_per_s,
            "frames_in": c.frames_in,
            "frames_in_session": c.frames_in - self._frames_in_at_start,
            "frames_malformed": c.frames_malformed,
            "frames_dropped": c.frames_malformed + c.frames_rejected,
            "connections_refused": c.connections_refused,
            "buffer_fill": stats["fill"],
            "buffer_size": stats["size"],
            "nan_skips": c.nan_skips,
            "restores": c.restores,
            "last_export_version": c.last_export_version,
            "cka_prev": self._drift.get("cka_prev"),
            "cka_pinned": self._drift.get("cka_pinned"),
            "max_steps": self._cfg.max_steps,
            "probe_knn": probe.knn_top1 if probe else None,
            "probe_random_knn": probe.random_knn_top1 if probe else None,
            "probe_step": probe.step if probe else None,
            "warnings": self._health.warnings(),
            **self._extra(),
        }


def _as_float(value: Any) -> Optional[float]:
    return None if value is None else float(value)
