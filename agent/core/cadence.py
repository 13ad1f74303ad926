"""When a periodic job (a checkpoint, an export) is due: one rule for every place that schedules one.

`every_steps` means "at least N steps since the last one" (`step - last_step >= N`), not "at multiples
of N", so a run that resumed, skipped a step or exported at shutdown keeps the same spacing. A time
bound (`every_seconds`) makes the job happen on a slow machine too: exports counted in steps alone
never came during a 300 s run on a loaded 2-core machine. Whether the job is on at all is `scheduled`.
"""

from __future__ import annotations

from typing import Optional


def scheduled(every_steps: Optional[int], every_seconds: Optional[float]) -> bool:
    """Whether a periodic job runs at all: either bound set. For `export.every_steps` / `every_seconds` this is
    "does the trainer export in-process" (both None: it does not; `export --watch` publishes instead)."""
    return every_steps is not None or every_seconds is not None


def due(
    step: int,
    last_step: Optional[int],
    every_steps: Optional[int],
    seconds_since: float,
    every_seconds: Optional[float],
) -> bool:
    """True when a job last done at `last_step` (None: never) is due at `step`.

    Never due without a new step since the last one; otherwise due after `every_steps` steps or
    `every_seconds` seconds (`seconds_since`: since the last one, or since the clock started),
    whichever comes first. With neither set, every new step is due (whether the job is on at all is
    `scheduled`).
    """
    if last_step is not None and step <= last_step:
        return False
    if last_step is None or (every_steps is None and every_seconds is None):
        return True
    by_steps = every_steps is not None and step - last_step >= every_steps
    by_time = every_seconds is not None and seconds_since >= every_seconds
    return by_steps or by_time
