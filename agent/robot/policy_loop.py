"""The toy policy loop behind `byol-agent runtime`: frames → HotEncoder → (a policy would act here).

It exists to show, and to let the `run` supervisor watch, that a policy keeps being served while
encoders are swapped under it: every call's latency and outcome is counted, once a second a line
is reported and `status-runtime.json` is rewritten atomically. With a history path
(`runtime.jsonl` in a run directory) it also appends, for `byol-agent report`, a `{"event": "serve"}`
record for the first version that served a call, a `{"event": "swap"}` record each time a call is served by
another version than the call before (a version loaded and replaced before any call is not a swap there), and every
`history_every_s` a record of the latency percentiles over the calls since the previous one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from agent.core.atomic import append_record, write_status
from agent.core.errors import SourceError
from agent.robot.runtime import HotEncoder
from agent.robot.source_base import FrameSource, SourceExhausted

log = logging.getLogger(__name__)
_RECONNECT_S = 1.0
HISTORY_EVERY_S = 10.0


@dataclass
class LoopStats:
    """Counters of the loop; latencies over the most recent calls only."""

    calls: int = 0
    failures: int = 0
    source_errors: int = 0
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=2000))
    first_served: Optional[int] = None  # the version of the first call that succeeded
    last_served: Optional[int] = None  # the version of the latest call that succeeded
    served_swaps: int = 0  # changes of version between two calls (the encoder's `swaps` also counts loads no call saw)

    def served(self, version: int) -> Optional[int]:
        """Count one successful call made by `version`; returns the version of the call before (None: the first)."""
        previous = self.last_served
        self.calls += 1
        if self.first_served is None:
            self.first_served = version
        elif version != previous:
            self.served_swaps += 1
        self.last_served = version
        return previous

    def percentiles(self) -> tuple[Optional[float], Optional[float]]:
        if not self.latencies_ms:
            return None, None
        p50, p99 = np.percentile(np.fromiter(self.latencies_ms, float), [50, 99])
        return float(p50), float(p99)

    def status(self, encoder: HotEncoder) -> dict[str, Any]:
        p50, p99 = self.percentiles()
        return {
            "version": encoder.version,
            "swaps": encoder.swaps,
            "calls": self.calls,
            "first_served_version": self.first_served,
            "last_served_version": self.last_served,
            "served_swaps": self.served_swaps,
            "failures": self.failures,
            "failed_loads": encoder.failed_loads,
            "source_errors": self.source_errors,
            "p50_ms": p50,
            "p99_ms": p99,
            "time": time.time(),
        }


class _History:
    """What `run_policy_loop` appends to its history file; see the module docstring."""

    def __init__(self, path: Path, every_s: float) -> None:
        self._path, self._every_s = path, every_s
        self._latencies_ms: list[float] = []
        self._next = 0.0  # the first record goes out at the first call

    def called(self, latency_ms: float, version: int, previous: Optional[int], swaps: int) -> None:
        """One successful call by `version` after one by `previous` (`LoopStats.served`): a "serve" record for the
        first, a "swap" record when the version changed; `swaps`: the swaps between calls so far."""
        self._latencies_ms.append(latency_ms)
        if version != previous:
            append_record(
                self._path,
                {
                    "time": time.time(),
                    "event": "serve" if previous is None else "swap",
                    "version": version,
                    "previous": previous,
                    "swaps": swaps,
                },
            )

    def watch(self, encoder: HotEncoder, stats: LoopStats, now: float, final: bool = False) -> None:
        """A latency record when one is due (or `final`)."""
        version = encoder.version
        if final or (now >= self._next and self._latencies_ms):
            window = np.asarray(self._latencies_ms, dtype=float)
            p50, p99 = (float(v) for v in np.percentile(window, [50, 99])) if len(window) else (None, None)
            append_record(
                self._path,
                {
                    "time": time.time(),
                    "version": version,
                    "swaps": encoder.swaps,
                    "calls": stats.calls,
                    "failures": stats.failures,
                    "window_calls": len(window),
                    "p50_ms": p50,
                    "p99_ms": p99,
                },
            )
            self._latencies_ms.clear()
            self._next = now + self._every_s


def format_line(elapsed_s: float, status: dict[str, Any]) -> str:
    def ms(value: Optional[float]) -> str:
        return "-" if value is None else f"{value:.2f}"

    return (
        f"t={elapsed_s:5.0f}s version {status['version']} | calls {status['calls']} "
        f"p50 {ms(status['p50_ms'])} ms p99 {ms(status['p99_ms'])} ms | swaps {status['swaps']} "
        f"| failures {status['failures']}"
    )


def run_policy_loop(
    encoder: HotEncoder,
    source: FrameSource,
    *,
    fps: float,
    stop: threading.Event,
    duration_s: Optional[float] = None,
    status_path: Optional[Path] = None,
    report: Callable[[str], None] = lambda line: print(line, flush=True),
    report_every_s: float = 1.0,
    history_path: Optional[Path] = None,
    history_every_s: float = HISTORY_EVERY_S,
) -> LoopStats:
    """Embed one frame per tick at `fps` until `stop`, `duration_s` or the end of a finite source.

    `history_path`: append swap and latency records there (see the module docstring; latencies in ms).
    """
    stats = LoopStats()
    history = _History(history_path, history_every_s) if history_path is not None else None
    start = time.monotonic()
    next_report = start + report_every_s
    next_tick = start
    connected = False

    def publish_status() -> None:
        status = stats.status(encoder)
        report(format_line(time.monotonic() - start, status))
        if status_path is not None:
            write_status(status_path, status)

    try:
        while not stop.is_set() and (duration_s is None or time.monotonic() - start < duration_s):
            try:
                if not connected:
                    source.connect()
                    connected = True
                frame = source.read()
            except SourceExhausted:
                report(f"{source.name} ended")
                break
            except SourceError as exc:  # lost or not there yet: count, back off, reopen
                stats.source_errors += 1
                log.warning("%s; reconnecting in %.0f s", exc, _RECONNECT_S)
                source.disconnect()
                connected = False
                stop.wait(_RECONNECT_S)
                continue
            t0 = time.perf_counter()
            try:
                _, version = encoder.embed_with_version(frame)
            except Exception:  # counted: a dropped inference is what this loop exists to expose
                stats.failures += 1
                log.exception("embed failed")
            else:
                stats.latencies_ms.append((time.perf_counter() - t0) * 1e3)
                previous = stats.served(version)
                if history is not None:
                    history.called(stats.latencies_ms[-1], version, previous, stats.served_swaps)
            now = time.monotonic()
            if history is not None:
                history.watch(encoder, stats, now)
            if now >= next_report:
                publish_status()
                next_report = now + report_every_s
            next_tick = max(next_tick + 1.0 / fps, now)
            stop.wait(max(0.0, next_tick - time.monotonic()))
    finally:
        source.disconnect()
    publish_status()
    if history is not None:
        history.watch(encoder, stats, time.monotonic(), final=True)
    return stats
