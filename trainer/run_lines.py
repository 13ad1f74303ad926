"""Typed records of the JSON-lines files other processes append to a run directory, read by field name.

- `CaptureLine`: one capture.jsonl record (`agent/robot/capture.py`, every 10 s and at the end):
  cumulative counters since that capture process started, and frames read per source.
- `RuntimeLine`: one runtime.jsonl record (`agent/robot/policy_loop.py`): a "serve" / "swap" event
  or, every 10 s, the calls so far and the latency percentiles (ms) of the calls since the last record.
A field a line lacks, or holds something other than a finite number where a number belongs, is None,
so readers test `is None` instead of probing string keys. The trainer's own metrics.jsonl lines stay
dicts (`RunMetrics`): their keys vary with the run's configuration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, TypeGuard, Union

Number = Union[int, float]


def is_number(value: Any) -> TypeGuard[Union[int, float]]:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def number(value: Any) -> Optional[Number]:
    """`value` when it is a finite int or float (kept as written: an int stays an int), else None."""
    return value if is_number(value) else None


@dataclass(frozen=True)
class CaptureLine:
    """One capture.jsonl record; counters are cumulative since its capture process started."""

    time: Optional[Number]  # wall clock, s since the epoch
    frames_read: Optional[Number]
    kept: Optional[Number]
    skipped_novelty: Optional[Number]
    superseded: Optional[Number]  # replaced by a newer frame of their camera: over the fps cap (absent before)
    sent: Optional[Number]
    dropped: Optional[Number]
    frames_per_source: Optional[list[Any]]  # frames read per source, as written (entries checked by readers)
    source_names: Optional[list[Any]]

    @classmethod
    def parse(cls, row: dict[str, Any]) -> "CaptureLine":
        per_source, names = row.get("frames_per_source"), row.get("source_names")
        return cls(
            time=number(row.get("time")),
            frames_read=number(row.get("frames_read")),
            kept=number(row.get("kept")),
            skipped_novelty=number(row.get("skipped_novelty")),
            superseded=number(row.get("superseded")),
            sent=number(row.get("sent")),
            dropped=number(row.get("dropped")),
            frames_per_source=per_source if isinstance(per_source, list) else None,
            source_names=names if isinstance(names, list) else None,
        )


@dataclass(frozen=True)
class RuntimeLine:
    """One runtime.jsonl record; `calls` and `failures` are cumulative since its runtime process started."""

    time: Optional[Number]  # wall clock, s since the epoch
    event: Optional[str]  # "serve", "swap", or None for a periodic record
    version: Optional[Number]  # the encoder version served
    calls: Optional[Number]
    failures: Optional[Number]
    p50_ms: Optional[Number]  # latency percentiles of the calls since the previous record
    p99_ms: Optional[Number]

    @classmethod
    def parse(cls, row: dict[str, Any]) -> "RuntimeLine":
        event = row.get("event")
        return cls(
            time=number(row.get("time")),
            event=event if isinstance(event, str) else None,
            version=number(row.get("version")),
            calls=number(row.get("calls")),
            failures=number(row.get("failures")),
            p50_ms=number(row.get("p50_ms")),
            p99_ms=number(row.get("p99_ms")),
        )
