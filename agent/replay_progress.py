"""How much work a replay is and how far it got: the plan printed at the start (`ReplayPlan`, with the
step rate a resumed run last measured) and the progress line drawn while it trains (`ReplayProgress`).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, TextIO, cast

from agent.core.errors import ByolAgentError
from agent.core.worker import Worker

if TYPE_CHECKING:
    from trainer.continual import ContinualTrainer

PROGRESS_EVERY_S = 0.5


@dataclass(frozen=True)
class ReplayPlan:
    """How much work a replay is: frames per recording (None: unknown), already delivered, updates per frame.

    `gated`: the novelty gate is on for these recordings (`capture.novelty_threshold` > 0), so the
    counts are upper bounds on what reaches the trainer. `frames_in` and `start_step`: the trainer's
    totals when this session starts (0 for a fresh run). The trainer's replay-ratio gate lets the run
    end at about `ratio` x all frames ever received, so the steps this session takes are that minus
    `start_step`.
    """

    counts: list[Optional[int]]
    delivered: list[int]
    ratio: float
    batch_size: int
    start_step: int
    frames_in: int = 0
    gated: bool = False

    @property
    def total_frames(self) -> Optional[int]:
        """Frames still to read in this session (before the novelty gate); None when a count is unknown."""
        known = [c for c in self.counts if c is not None]
        if len(known) < len(self.counts):
            return None
        return sum(max(0, c - d) for c, d in zip(known, [*self.delivered, *[0] * len(known)]))

    @property
    def total_steps(self) -> Optional[int]:
        """The step count the run ends at (across resumes), at most when the gate is on."""
        frames = self.total_frames
        # the trainer steps while step < ratio x frames in (trainer/lockstep.py), so it ends at the ceiling
        return None if frames is None else max(self.start_step, math.ceil(self.ratio * (self.frames_in + frames)))

    @property
    def steps_left(self) -> Optional[int]:
        total = self.total_steps
        return None if total is None else total - self.start_step

    def describe(self, steps_per_s: Optional[float] = None) -> str:
        """One line: frames, steps and, given a measured step rate, the time it will take."""
        frames, done = self.total_frames, sum(self.delivered)
        bound = "at most " if self.gated else ""
        what = f"{bound}{frames} frames" if frames is not None else "frames (count unknown)"
        if self.gated:
            what += " (capture.novelty_threshold is on: it skips near-duplicates, so fewer may reach training)"
        resumed = (
            f" left, resuming after {done} already trained on (step {self.start_step})"
            if done or self.start_step
            else ""
        )
        steps = ""
        if self.steps_left is not None:
            steps = f" = {bound or 'about '}{self.steps_left} steps"
            if steps_per_s:
                steps += f" (~{format_duration(self.steps_left / steps_per_s)} at the last {steps_per_s:.2f} steps/s)"
        return (
            f"{what} in {len(self.counts)} recording(s){resumed}; train.replay_ratio {self.ratio:g} updates per "
            f"frame{steps} (each frame in ~{self.ratio * self.batch_size:.0f} samples of batch {self.batch_size}); "
            "lower train.replay_ratio for a faster, lighter pass"
        )


def last_step_rate(run_dir: Path) -> Optional[float]:
    """The last session's training rate (steps/s) in RUN_DIR/metrics.jsonl, for a resumed run's plan: steps over
    wall time from its first to its last training record, so export and probe pauses count (the newest window's
    `steps_per_s` alone, its fallback, was off by 2x); None when there is none (a fresh run, an unreadable file)."""
    from trainer.run_records import read_metrics  # only a resumed run needs it

    if not (Path(run_dir) / "metrics.jsonl").exists():
        return None
    try:
        metrics = read_metrics(run_dir)
    except ByolAgentError:
        return None
    rows = metrics.train
    starts = [e["time"] for e in metrics.of("start") if isinstance(e.get("time"), (int, float))]
    timed = [
        (row["time"], row["step"])
        for row in rows
        if isinstance(row.get("time"), (int, float))
        and isinstance(row.get("step"), int)
        and (not starts or row["time"] >= starts[-1])
    ]
    if len(timed) >= 2 and timed[-1][0] > timed[0][0] and timed[-1][1] > timed[0][1]:
        return (timed[-1][1] - timed[0][1]) / (timed[-1][0] - timed[0][0])
    rates = [
        row["steps_per_s"]
        for row in rows
        if isinstance(row.get("steps_per_s"), (int, float)) and row["steps_per_s"] > 0
    ]
    return float(rates[-1]) if rates else None


def format_duration(seconds: float) -> str:
    """`1:02:03` / `4:05`: hours, minutes, seconds."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class _ErasingLine:
    """A text stream that erases the terminal's current line (a progress line) before each write."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write("\r\x1b[K" + text)

    def flush(self) -> None:
        self._stream.flush()


class ReplayProgress(Worker):
    """A progress line on stderr (a terminal): steps against the plan, frames in, step rate and an ETA.

    Written with a carriage return rather than a progress-bar library, so replay needs nothing beyond the
    declared dependencies. The rate is measured over this session's training only (from its first step),
    so the time spent filling the buffer does not make the ETA look shorter or longer than it is.
    """

    def __init__(self, trainer: "ContinualTrainer", plan: ReplayPlan, stream: Optional[TextIO] = None) -> None:
        super().__init__("replay-progress")
        self._trainer, self._plan, self._stream = trainer, plan, sys.stderr if stream is None else stream
        self._first: Optional[tuple[float, int]] = None  # (time, step) when this session's training began
        self._latest: tuple[float, int] = (0.0, 0)  # (time, step) of the newest step seen
        self._width = 0

    def loop_once(self) -> None:
        self._refresh()
        self.stop_event.wait(PROGRESS_EVERY_S)

    def rate(self) -> Optional[float]:
        """Steps per second from this session's first step to its latest one (None before two steps)."""
        step, now = self._trainer.step, time.monotonic()
        if self._first is None:
            if step > self._plan.start_step:
                self._first = self._latest = (now, step)
            return None
        if step != self._latest[1]:
            self._latest = (now, step)
        (t0, s0), (t1, s1) = self._first, self._latest
        return (s1 - s0) / (t1 - t0) if s1 > s0 and t1 > t0 else None

    def line(self) -> str:
        step, total = self._trainer.step, self._plan.total_steps
        frames = self._plan.total_frames
        frames_total = "?" if frames is None else self._plan.frames_in + frames
        rate = self.rate()
        parts = [f"replay {step}/{total if total is not None else '?'} steps"]
        if total:
            parts[0] += f" ({100 * min(step, total) / total:.0f}%)"
        parts.append(f"frames {self._trainer.counters.frames_in}/{frames_total}")
        if rate:
            parts.append(f"{rate:.2f} steps/s")
            if total is not None and total > step:
                parts.append(f"ETA {format_duration((total - step) / rate)}")
        return " | ".join(parts)

    def _refresh(self, end: str = "") -> None:
        text = self.line()
        pad = max(0, self._width - len(text))
        self._width = len(text)
        self._stream.write("\r" + text + " " * pad + end)
        self._stream.flush()

    def take_log_lines(self) -> list[tuple[logging.StreamHandler, TextIO]]:
        """Make the root logger's handlers on this stream print above the line (it is erased first and redrawn
        at the next refresh) instead of after it; returns (handler, old stream) pairs to put back."""
        moved = []
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream in (self._stream, sys.__stderr__):
                old = handler.setStream(_ErasingLine(self._stream))  # the stream it replaced (a new object: never None)
                moved.append((handler, cast(TextIO, old)))
        return moved

    def close(self) -> None:
        self._refresh(end="\n")
