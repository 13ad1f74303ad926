"""Training metrics: records fanned out to the configured sinks, a `status-trainer.json` snapshot, a live line.

Each record goes to every sink of `metrics.sinks` (trainer/sinks/: `metrics.jsonl`, the run's
record, and TensorBoard event files by default); a sink that fails (full disk, unwritable folder,
missing package) costs its records, counted and logged on the 1st and every 100th loss, never the
run: it is closed and reopened at the next record after a back-off (1 s doubling to 10 s), or left
off for the run when its package is missing. `status-trainer.json` is rewritten atomically about
once a second for the `run` supervisor; the live line on stderr is for a person watching (carriage
return on a TTY, a plain line every few seconds in a log file).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TextIO

import numpy as np

from agent.core.atomic import write_status
from agent.core.backoff import backoff_s, worth_logging
from trainer.sinks import MetricsSink, check_sink_names, open_sink, sink_class
from trainer.sinks.jsonl import METRICS_NAME

STATUS_NAME = "status-trainer.json"
__all__ = ["METRICS_NAME", "STATUS_NAME", "MetricSinks", "MetricsWriter", "format_status", "drift_text"]
log = logging.getLogger(__name__)

REOPEN_FIRST_S, REOPEN_MAX_S = 1.0, 10.0


class _GuardedSink:
    """One sink of a MetricsWriter, never raising: closed after a failure and reopened at the next
    record after a back-off; the records it loses are counted and logged (1st and every 100th)."""

    def __init__(self, name: str, run_dir: Path, start_step: int, clock: Callable[[], float]) -> None:
        self.name, self._run_dir, self._clock = name, run_dir, clock
        self._start_step = start_step  # the first opening only: a reopened sink drops nothing
        self.sink: Optional[MetricsSink] = None
        self.lost = 0
        self._failures = 0  # in a row, for the back-off
        self._retry_at = -math.inf
        self._reason = ""
        self._off = False  # its package is missing: off for the run

    @property
    def shows_images(self) -> bool:
        return not self._off and sink_class(self.name).shows_images

    def open(self) -> bool:
        """Whether the sink is open (opened now when closed and its back-off has passed)."""
        if self.sink is not None:
            return True
        if self._off or self._clock() < self._retry_at:
            return False
        try:
            self.sink = open_sink(self.name, self._run_dir, self._start_step)
        except ImportError as exc:
            self._off = True
            log.warning("metrics sink %r off for this run: %s", self.name, exc)
            return False
        except Exception as exc:
            self._fail(exc)
            return False
        self._start_step = 0
        return True

    def call(self, method: str, *args: Any) -> None:
        if self._off:
            return
        if not self.open():
            self._lose()
            return
        try:
            getattr(self.sink, method)(*args)
        except Exception as exc:
            self.close()
            self._fail(exc)
            self._lose()
            return
        self._failures = 0
        if self.lost:
            log.info("metrics sink %r writing again after %d record(s) lost", self.name, self.lost)
            self.lost = 0

    def _fail(self, exc: Exception) -> None:
        self._failures += 1
        self._retry_at = self._clock() + backoff_s(self._failures, first_s=REOPEN_FIRST_S, max_s=REOPEN_MAX_S)
        self._reason = (str(getattr(exc, "strerror", None) or exc).splitlines() or [type(exc).__name__])[0][:200]

    def _lose(self) -> None:
        self.lost += 1
        if worth_logging(self.lost):
            log.warning("%d metrics record(s) not written to sink %r: %s", self.lost, self.name, self._reason)

    def close(self) -> None:
        sink, self.sink = self.sink, None
        if sink is not None:
            try:
                sink.close()
            except Exception as exc:  # the contract says never, but a close must not stop the run's shutdown
                log.warning("metrics sink %r did not close cleanly: %s", self.name, exc)


class MetricSinks:
    """Sends records and image grids to the named sinks (trainer/sinks/), never raising for one that fails.

    `names`: registered sink names (ConfigError for an unknown one); `start_step`: the step this
    process resumes from (a sink may drop what an earlier process logged beyond it). Every sink is
    opened now, so an unwritable folder is reported at start rather than at the first record.
    """

    def __init__(
        self, run_dir: Path, names: Sequence[str], start_step: int = 0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        check_sink_names(names)
        self._sinks = [_GuardedSink(name, Path(run_dir), start_step, clock) for name in dict.fromkeys(names)]
        for sink in self._sinks:
            sink.open()
        self._closed = False

    @property
    def shows_images(self) -> bool:
        """Whether some sink shows image grids (so callers can skip making them)."""
        return any(sink.shows_images for sink in self._sinks)

    def log(self, record: dict[str, Any]) -> None:
        """Send one record (a wall-clock "time" is added unless it has one) to every sink."""
        stamped = {"time": time.time(), **record}
        for sink in self._sinks:
            sink.call("write", stamped)

    def image(self, tag: str, step: int, image: np.ndarray) -> None:
        """Send an (H, W, 3) uint8 image to the sinks that show images."""
        for sink in self._sinks:
            if sink.shows_images:
                sink.call("image", tag, step, image)

    def close(self) -> None:
        """Close every sink; safe to call twice."""
        if not self._closed:
            self._closed = True
            for sink in self._sinks:
                sink.close()


class MetricsWriter:
    """Sends metric records to the sinks, keeps the status file fresh, and prints the live status line.

    `sinks`, `start_step`: as `MetricSinks`.
    """

    def __init__(
        self,
        run_dir: Path,
        status_every_s: float = 1.0,
        live_every_s: float = 10.0,
        stream: Optional[TextIO] = None,
        clock: Callable[[], float] = time.monotonic,
        sinks: Sequence[str] = ("jsonl",),
        start_step: int = 0,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.sinks = MetricSinks(self.run_dir, sinks, start_step, clock)
        self._status_every_s = status_every_s
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty()
        self._live_every_s = 0.5 if self._tty else live_every_s
        self._clock = clock
        self._last_status = -math.inf
        self._last_live = -math.inf
        self._live_dirty = False
        self._closed = False

    @property
    def shows_images(self) -> bool:
        """Whether some configured sink shows image grids (so callers can skip making them)."""
        return self.sinks.shows_images

    def log(self, record: dict[str, Any]) -> None:
        """Send one record (a wall-clock "time" is added) to every sink; a failing sink's loss is counted."""
        self.sinks.log(record)

    def image(self, tag: str, step: int, image: np.ndarray) -> None:
        """Send an (H, W, 3) uint8 image to the sinks that show images."""
        self.sinks.image(tag, step, image)

    def due(self) -> bool:
        """Whether `status` would write anything now (so callers can skip gathering the fields)."""
        now = self._clock()
        return now - self._last_status >= self._status_every_s or now - self._last_live >= self._live_every_s

    def status(self, fields: dict[str, Any], force: bool = False) -> None:
        """Refresh status-trainer.json (at most every status_every_s) and the live line on stderr."""
        now = self._clock()
        if force or now - self._last_status >= self._status_every_s:
            self._last_status = now
            write_status(self.run_dir / STATUS_NAME, {"time": time.time(), **fields})
        if force or now - self._last_live >= self._live_every_s:
            self._last_live = now
            self._print_live(format_status(fields))

    def _print_live(self, text: str) -> None:
        if self._tty:
            self._stream.write("\r" + text[:200].ljust(100))
            self._live_dirty = True
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def close(self) -> None:
        """End the live line and close every sink; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._live_dirty:
                self._stream.write("\n")
                self._stream.flush()
        finally:
            self.sinks.close()


def format_status(f: dict[str, Any]) -> str:
    """One line a person can read at a glance."""

    def num(key: str, fmt: str) -> str:
        value = f.get(key)
        return format(value, fmt) if isinstance(value, (int, float)) and math.isfinite(value) else "-"

    return (
        f"step {f.get('step', 0)} | loss {num('loss', '.4f')} | emb std {num('embedding_std', '.4f')} | "
        f"{num('img_per_s', '.1f')} img/s | frames {f.get('frames_in', 0)} in, {f.get('frames_malformed', 0)} bad | "
        f"buffer {num('buffer_fill', '.0%')} | tau {num('tau', '.4f')} | nan skips {f.get('nan_skips', 0)} | "
        + (f"refused {f['connections_refused']} | " if f.get("connections_refused") else "")
        + (
            f"kNN {num('probe_knn', '.3f')} (init {num('probe_random_knn', '.3f')}, step {f.get('probe_step')}) | "
            if f.get("probe_knn") is not None
            else ""
        )
        + (f"{drift_text(f)} | " if drift_text(f) else "")
        + "".join(f"WARNING {w} | " for w in f.get("warnings") or [] if isinstance(w, str))  # trainer/health.py
        + f"{f.get('state', '')}"
    )


def drift_text(f: dict[str, Any]) -> str:
    """ "v12 CKA 0.998 prev, 0.861 v1": the last exported version's drift to the previous version and to
    each pinned one (status fields "last_export_version", "cka_prev", "cka_pinned"); "" when not known."""
    prev, pinned = f.get("cka_prev"), f.get("cka_pinned")
    if not isinstance(prev, (int, float)):
        return ""
    parts = [f"CKA {prev:.3f} prev"]
    if isinstance(pinned, dict):
        parts += [
            f"{cka:.3f} v{pin}"
            for pin, cka in sorted(pinned.items(), key=lambda kv: str(kv[0]).zfill(12))
            if isinstance(cka, (int, float))
        ]
    version = f.get("last_export_version")
    return (f"v{version} " if version is not None else "") + ", ".join(parts)
