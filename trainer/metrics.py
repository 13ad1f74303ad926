"""Training metrics: an append-only `metrics.jsonl`, a `status-trainer.json` snapshot, a live line.

`metrics.jsonl` is the run's record (one JSON object per line, flushed per line so a kill -9 loses
at most the line being written); `status-trainer.json` is rewritten atomically about once a second
for the `run` supervisor; the live line on stderr is for a person watching (carriage return on a
TTY, a plain line every few seconds in a log file).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, TextIO

from agent.core.atomic import jsonable, write_status
from agent.core.repeats import worth_logging

STATUS_NAME = "status-trainer.json"
METRICS_NAME = "metrics.jsonl"
log = logging.getLogger(__name__)


class MetricsWriter:
    """Appends metric records, keeps the status file fresh, and prints the live status line."""

    def __init__(
        self,
        run_dir: Path,
        status_every_s: float = 1.0,
        live_every_s: float = 10.0,
        stream: Optional[TextIO] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.run_dir / METRICS_NAME, "a", encoding="utf-8")
        self._status_every_s = status_every_s
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty()
        self._live_every_s = 0.5 if self._tty else live_every_s
        self._clock = clock
        self._last_status = -math.inf
        self._last_live = -math.inf
        self._live_dirty = False
        self._lost = 0

    def log(self, record: dict[str, Any]) -> None:
        """Append one record (a wall-clock "time" is added) and flush it to disk."""
        line = json.dumps(jsonable({"time": time.time(), **record}))
        try:
            self._file.write(line + "\n")
            self._file.flush()
        except OSError as exc:  # disk full: the record is lost, training is not
            self._lost += 1
            if worth_logging(self._lost):
                log.warning("%d metrics record(s) not written to %s: %s", self._lost, METRICS_NAME, exc.strerror or exc)
            return
        if self._lost:
            log.info("metrics records written again after %d lost", self._lost)
            self._lost = 0

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
        try:
            if self._live_dirty:
                self._stream.write("\n")
                self._stream.flush()
        finally:
            try:
                self._file.close()
            except OSError:  # the buffered tail could not be flushed (disk full): already counted as lost
                pass


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
        + (f"kNN {num('probe_knn', '.3f')} (init {num('probe_random_knn', '.3f')}, step {f.get('probe_step')}) | "
           if f.get("probe_knn") is not None else "")
        + (f"{drift_text(f)} | " if drift_text(f) else "")
        + f"{f.get('state', '')}"
    )


def drift_text(f: dict[str, Any]) -> str:
    """"v12 CKA 0.998 prev, 0.861 v1": the last exported version's drift to the previous version and to
    each pinned one (status fields "last_export_version", "cka_prev", "cka_pinned"); "" when not known."""
    prev, pinned = f.get("cka_prev"), f.get("cka_pinned")
    if not isinstance(prev, (int, float)):
        return ""
    parts = [f"CKA {prev:.3f} prev"]
    if isinstance(pinned, dict):
        parts += [f"{cka:.3f} v{pin}" for pin, cka in sorted(pinned.items(), key=lambda kv: str(kv[0]).zfill(12))
                  if isinstance(cka, (int, float))]
    version = f.get("last_export_version")
    return (f"v{version} " if version is not None else "") + ", ".join(parts)
