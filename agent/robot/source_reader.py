"""One source's background read loop (`SourceReader`), written once for every kind of source.

It connects (a live source absent at start is waited for with back-off), reads, fits each frame to
the stored size and channels, paces recordings and the demo scene (`_Pacer`), reopens a lost source
with exponential back-off and hands frames to capture's main loop (`_Handoff`: the newest of each camera for
live pacing, a short waiting queue when every frame must be kept). An `agent.core.worker.Worker`:
its errors are stored and re-raised in the main loop.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from agent.core.backoff import backoff_s
from agent.core.config import CaptureConfig, Pace
from agent.core.errors import ByolAgentError, SourceError
from agent.core.frames import fit_frame, to_channels
from agent.core.worker import Worker
from agent.robot.source_base import FrameSource, SourceExhausted

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Grab:
    image: np.ndarray
    timestamp: float  # time.time() when the frame was grabbed (after pacing): how stale it is
    camera_id: Optional[int] = None  # the relayed camera of a several-camera source; None: the reader's own
    wire_time: Optional[float] = None  # the frame's time on the wire (s): the recording's clock, else `timestamp`


class _Handoff:
    """Reader → main loop: the newest frame of each camera (realtime) or a bounded queue that waits (asap).

    Realtime keeps one frame per camera: a new frame replaces its camera's waiting one in place, and
    `take` returns the camera that has waited longest. A source relaying several cameras (a
    subscription to a capture's PUB) sends them back to back; keeping only the newest frame overall
    handed the main loop whichever camera came last in each burst at nearly every fps tick (182
    frames of camera 0 against 1 of camera 1 from a two-camera publisher). A one-camera source keeps
    its single newest frame, as before.
    """

    def __init__(self, overwrite: bool, depth: int, wake: threading.Event) -> None:
        self._overwrite, self._depth, self._wake = overwrite, depth, wake
        self._items: collections.deque[Grab] = collections.deque()
        self._newest: dict[Optional[int], Grab] = {}  # realtime: camera id -> its newest frame, oldest camera first
        self._cond = threading.Condition()
        self.superseded = 0  # realtime: frames replaced by a newer one of their camera before the main loop took them

    def put(self, item: Grab, halt: threading.Event) -> None:
        with self._cond:
            if self._overwrite:
                self.superseded += item.camera_id in self._newest
                self._newest[item.camera_id] = item  # an existing camera keeps its place in the turn
            else:
                while len(self._items) >= self._depth and not halt.is_set():
                    self._cond.wait(0.1)
                self._items.append(item)
        self._wake.set()

    def take(self) -> Optional[Grab]:
        with self._cond:
            if self._newest:
                return self._newest.pop(next(iter(self._newest)))
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def empty(self) -> bool:
        with self._cond:
            return not self._items and not self._newest


class _Pacer:
    """Releases a recording's frames at the speed they were recorded (or at `fps` without timestamps).

    A jump of more than `PAUSE_S` between two frames' media times is a pause in the recording, not a wait:
    the next episode of a LeRobot dataset (agent/robot/lerobot_dataset.py, EPISODE_GAP_S), a log resumed later.
    """

    PAUSE_S = 10.0

    def __init__(self, fps: float) -> None:
        self._period = 1.0 / fps
        self.reset()

    def reset(self) -> None:
        self._anchor: Optional[float] = None
        self._base = 0.0
        self._count = 0
        self._last: Optional[float] = None

    def wait(self, media_time: Optional[float], halt: threading.Event) -> None:
        now = time.monotonic()
        self._count += 1
        offset = (media_time - self._base) if media_time is not None else self._count * self._period
        paused = media_time is not None and self._last is not None and media_time - self._last > self.PAUSE_S
        self._last = media_time
        if self._anchor is None or offset < 0 or paused or now - (self._anchor + offset) > 1.0:
            # first frame, a looped video, a pause in the recording, or far behind: restart the clock rather than burst
            self._anchor, self._base, self._count = now, media_time or 0.0, 0
            return
        halt.wait(max(0.0, self._anchor + offset - now))


class _RecordingClock:
    """A looping recording's own clock (`FrameSource.media_time_s`) made to run forward: when it steps back
    (a looped video restarts at 0), later frames are shifted to follow the last one by one period.
    Temporal positives pair frames by this time, so 3 s of video stay 3 s apart however fast they are read."""

    def __init__(self, period_s: float) -> None:
        self._period, self._offset = period_s, 0.0
        self._last: Optional[float] = None

    def time(self, media_s: float) -> float:
        if self._last is not None and media_s + self._offset < self._last:
            self._offset = self._last + self._period - media_s
        now = media_s + self._offset
        self._last = now
        return now


class SourceReader(Worker):
    """One source's background read loop (an `agent.core.worker.Worker`): read, fit, pace, hand off;
    reopen with backoff when lost. `halt` is the stop event shared by all of a capture's readers."""

    def __init__(
        self,
        source: FrameSource,
        cfg: CaptureConfig,
        *,
        pace: Pace,
        wake: threading.Event,
        halt: threading.Event,
        lossless: bool = False,
        start_frame: int = 0,
        name: str = "capture-reader",
    ) -> None:
        super().__init__(name, stop_event=halt)
        self.source, self._cfg, self._pace = source, cfg, pace
        self._start_frame = start_frame
        # a lossless capture keeps every frame of a finite source: the reader waits for the main loop
        # (a recording faster than capture.fps then plays slower instead of being thinned)
        self.keep_all = lossless and source.finite
        overwrite = pace == "realtime" and not self.keep_all
        self._handoff = _Handoff(overwrite=overwrite, depth=2, wake=wake)
        self._wake_main = wake
        self._opened = threading.Event()
        self._retries = 0  # reopen attempts since the last frame read; sets the back-off
        self._reopening = False  # in `_reopen`: lost (or not there yet) and being retried
        self._last_frame_at: Optional[float] = None  # time.monotonic() of the last frame read
        self._read_timeout_s = cfg.read_timeout_s
        self._fit = cfg.height, cfg.width, cfg.resize
        self._pacer = _Pacer(cfg.fps) if pace == "realtime" and not source.live else None
        self._clock = _RecordingClock(1.0 / cfg.fps)
        self.frames_read = 0
        self.stale = 0
        self.reconnects = 0
        self.exhausted = False

    def wait_opened(self, stop: threading.Event) -> None:
        """Block until the first connect finished; re-raise its error (a bad source fails at start-up)."""
        while not self._opened.wait(0.1):
            if stop.is_set():
                return
        self.check()

    @property
    def done(self) -> bool:
        """The loop has ended (source exhausted, failed or halted) and every frame was taken."""
        return not self.alive and self._handoff.empty()

    @property
    def superseded(self) -> int:
        """Frames read but replaced by a newer frame of their camera before the main loop took one (realtime:
        a camera faster than `capture.fps`); asap never replaces one."""
        return self._handoff.superseded

    def read_latest(self, max_age_s: Optional[float] = None) -> Optional[Grab]:
        """The newest frame not yet taken, or None; a frame older than `max_age_s` is refused (stale)."""
        grab = self._handoff.take()
        if grab is not None and max_age_s is not None and time.time() - grab.timestamp > max_age_s:
            self.stale += 1
            return None
        return grab

    def state(self, now: Optional[float] = None) -> str:
        """What the source is doing, for the status file and the `run` status line:

        "failed" (its error ended the reader) · "ended" (a finite source ran out) · "waiting" (a live
        source that has not delivered a frame yet: not there, or connected and silent) · "stale" (a
        live source whose last frame is `capture.read_timeout_s` or more old, lost or not) · "lost"
        (being reopened) · "ok". `now`: time.monotonic().
        """
        if self.error is not None:
            return "failed"
        if self.exhausted:
            return "ended"
        if self.source.live:
            if self._last_frame_at is None:
                return "waiting"
            if (time.monotonic() if now is None else now) - self._last_frame_at >= self._read_timeout_s:
                return "stale"
        return "lost" if self._reopening else "ok"

    def status(self, now: Optional[float] = None) -> dict:
        """The source's line in the status file: name, state, frames read, reopens, age of the newest frame (s),
        frames skipped and damage met (`FrameSource.skipped`, `errors`)."""
        now = time.monotonic() if now is None else now
        age = None if self._last_frame_at is None else round(now - self._last_frame_at, 2)
        return {
            "name": self.source.name,
            "state": self.state(now),
            "frames_read": self.frames_read,
            "reconnects": self.reconnects,
            "last_frame_age_s": age,
            "skipped": self.source.skipped,
            "errors": self.source.errors,
        }

    def initialize(self) -> None:
        try:
            if self._start_frame:
                self.source.start_at(self._start_frame)
                log.info("%s: starting at frame %d (already delivered)", self.source.name, self._start_frame)
            self.source.connect()
        except SourceError as exc:
            if not self.source.live:
                raise  # a file that cannot be opened now will not open later: a start-up error (see on_error)
            self._opened.set()  # a camera or stream that is not up yet is waited for like a lost one
            self._reopen(exc)
        self._opened.set()

    def on_error(self, exc: BaseException) -> None:
        self._opened.set()  # only now: the error is stored, so `wait_opened` re-raises it

    def loop_once(self) -> bool:
        try:
            raw = self.source.read()
        except SourceExhausted:
            self.exhausted = True
            log.info("%s: end of input after %d frames", self.source.name, self.frames_read)
            return False
        except SourceError as exc:
            if not self._reopen(exc):
                return False
            if self._pacer is not None:
                self._pacer.reset()
            return True
        self._retries = 0
        self._last_frame_at = time.monotonic()
        self.frames_read += 1
        image = to_channels(fit_frame(raw, *self._fit), self._cfg.channels)  # a mono capture stores gray
        if self._pacer is not None:
            self._pacer.wait(self.source.media_time_s, self.stop_event)
        now = time.time()
        media = self.source.media_time_s
        # a looping recording's clock is made to run on over its restarts; a finite one's is sent as it is
        # (a log's header stamps may step back a little between messages: that is their real time)
        wire_time = now if media is None else media if self.source.finite else self._clock.time(media)
        self._handoff.put(
            Grab(image=image, timestamp=now, camera_id=self.source.camera_id, wire_time=wire_time), self.stop_event
        )
        return True

    def shutdown(self) -> None:
        self.source.disconnect()
        self._wake_main.set()

    def _reopen(self, exc: SourceError) -> bool:
        """Reopen with exponential backoff until it works (True) or capture is stopping (False).

        A live source that has not delivered a frame yet (absent at start) is waited for the same way."""
        self._reopening = True
        try:
            return self._reopen_with_backoff(exc, waiting=self.source.live and self.frames_read == 0)
        finally:
            self._reopening = False

    def _reopen_with_backoff(self, exc: SourceError, waiting: bool) -> bool:
        name = self.source.name
        delay = self._next_delay()
        if waiting:
            log.warning("%s is not there: %s; waiting for it (next try in %.1f s)", name, exc, delay)
        else:
            log.warning("%s lost: %s; reopening in %.1f s", name, exc, delay)
        attempts = 0
        while True:
            self.source.disconnect()
            if self.stop_event.wait(delay):
                return False
            attempts += 1
            try:
                self.source.connect()
            except ByolAgentError as err:
                delay = self._next_delay()
                what = "still waiting, attempt" if waiting else "reopen attempt"
                log.warning("%s: %s %d failed: %s; next in %.1f s", name, what, attempts, err, delay)
                continue
            if waiting:
                log.warning("%s connected after %d attempt(s)", name, attempts)
            else:
                self.reconnects += 1
                log.warning("%s reopened after %d attempt(s)", name, attempts)
            return True

    def _next_delay(self) -> float:
        self._retries += 1
        return backoff_s(self._retries, first_s=self._cfg.reconnect_backoff_s, max_s=self._cfg.reconnect_max_backoff_s)
