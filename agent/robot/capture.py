"""The capture process: sources → fit to the stored size → novelty gate → ZeroMQ.

Each source gets one background read loop (`SourceReader`, written once for every kind of source):
it reads, reopens a lost source with exponential backoff, paces recordings and the demo scene, and
hands frames to the main loop. The main loop alone owns the `FrameSender` (ZeroMQ sockets are not
thread-safe); it applies the per-source fps cap and the novelty gate and never waits for the trainer
unless asked to be lossless. Errors in a reader thread are stored and re-raised in the main loop.

What can come back is waited for; what cannot fails at start-up. A live source (camera, stream,
subscription) that is not there when capture starts is retried with the same back-off as a lost
one and shown as `waiting`; one that delivers nothing for `capture.read_timeout_s` is `stale` (the
main loop's watchdog logs it) and is reopened once its read fails (streams and subscriptions time
out after `read_timeout_s`). A file, folder or glob that cannot be opened is an error before
anything is sent (`SourceError`, exit 2). Each source's state goes into the status file.
"""

from __future__ import annotations

import collections
import logging
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from agent.core.atomic import write_status
from agent.core.config import CaptureConfig, Pace, WireConfig
from agent.core.errors import ByolAgentError, SourceError
from agent.core.frames import LIVE_NOVELTY_THRESHOLD, NoveltyGate, fit_frame, to_channels
from agent.core.repeats import backoff_s
from agent.core.wire import Frame
from agent.core.worker import Worker
from agent.robot.curve import WireSecurity
from agent.robot.sources import FrameSource, SourceExhausted, open_source
from agent.robot.transport import FrameSender

log = logging.getLogger(__name__)

LOSSLESS_RETRY_S = 0.2
END_TIMEOUT_S = 5.0  # a lossy capture waits this long for a trainer to take a camera's end-of-stream
JOIN_TIMEOUT_S = 2.0
STATUS_EVERY_S = 1.0


@dataclass(frozen=True)
class CaptureStats:
    """What happened to the frames: read from the sources, kept by the novelty gate (or skipped),
    refused as stale, sent to the trainer or dropped because it was slow or absent; sources reopened."""

    frames_read: int = 0
    kept: int = 0
    skipped_novelty: int = 0
    stale: int = 0
    sent: int = 0
    dropped: int = 0
    reconnects: int = 0

    def line(self) -> str:
        return " ".join(f"{name}={value}" for name, value in vars(self).items())


@dataclass(frozen=True)
class _Grab:
    image: np.ndarray
    timestamp: float  # time.time() when the frame was grabbed (after pacing)
    camera_id: Optional[int] = None  # the relayed camera of a several-camera source; None: the reader's own


class _Handoff:
    """Reader → main loop: keep only the newest frame (realtime) or a bounded queue that waits (asap)."""

    def __init__(self, overwrite: bool, depth: int, wake: threading.Event) -> None:
        self._overwrite, self._depth, self._wake = overwrite, depth, wake
        self._items: collections.deque[_Grab] = collections.deque()
        self._cond = threading.Condition()

    def put(self, item: _Grab, halt: threading.Event) -> None:
        with self._cond:
            if self._overwrite:
                if len(self._items) >= self._depth:
                    self._items.popleft()
            else:
                while len(self._items) >= self._depth and not halt.is_set():
                    self._cond.wait(0.1)
            self._items.append(item)
        self._wake.set()

    def take(self) -> Optional[_Grab]:
        with self._cond:
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def empty(self) -> bool:
        with self._cond:
            return not self._items


class _Pacer:
    """Releases a recording's frames at the speed they were recorded (or at `fps` without timestamps)."""

    def __init__(self, fps: float) -> None:
        self._period = 1.0 / fps
        self.reset()

    def reset(self) -> None:
        self._anchor: Optional[float] = None
        self._base = 0.0
        self._count = 0

    def wait(self, media_time: Optional[float], halt: threading.Event) -> None:
        now = time.monotonic()
        self._count += 1
        offset = (media_time - self._base) if media_time is not None else self._count * self._period
        if self._anchor is None or offset < 0 or now - (self._anchor + offset) > 1.0:
            # first frame, a looped video, or far behind: restart the clock rather than burst
            self._anchor, self._base, self._count = now, media_time or 0.0, 0
            return
        halt.wait(max(0.0, self._anchor + offset - now))


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
        name: str = "capture-reader",
    ) -> None:
        super().__init__(name, stop_event=halt)
        self.source, self._cfg, self._pace = source, cfg, pace
        # a lossless capture keeps every frame of a finite source: the reader waits for the main loop
        # (a recording faster than capture.fps then plays slower instead of being thinned)
        self.keep_all = lossless and source.finite
        overwrite = pace == "realtime" and not self.keep_all
        self._handoff = _Handoff(overwrite=overwrite, depth=1 if overwrite else 2, wake=wake)
        self._wake_main = wake
        self._opened = threading.Event()
        self._retries = 0  # reopen attempts since the last frame read; sets the back-off
        self._reopening = False  # in `_reopen`: lost (or not there yet) and being retried
        self._last_frame_at: Optional[float] = None  # time.monotonic() of the last frame read
        self._read_timeout_s = cfg.read_timeout_s
        self._fit = cfg.height, cfg.width, cfg.resize
        self._pacer = _Pacer(cfg.fps) if pace == "realtime" and not source.live else None
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

    def read_latest(self, max_age_s: Optional[float] = None) -> Optional[_Grab]:
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
        """The source's line in the status file: name, state, frames read, reopens, age of the newest frame (s)."""
        now = time.monotonic() if now is None else now
        age = None if self._last_frame_at is None else round(now - self._last_frame_at, 2)
        return {
            "name": self.source.name, "state": self.state(now), "frames_read": self.frames_read,
            "reconnects": self.reconnects, "last_frame_age_s": age,
        }

    def initialize(self) -> None:
        try:
            self.source.connect()
        except SourceError as exc:
            if not self.source.live:
                raise  # a file that cannot be opened now will not open later: a start-up error
            self._opened.set()  # a camera or stream that is not up yet is waited for like a lost one
            self._reopen(exc)
        finally:
            self._opened.set()

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
        self._handoff.put(_Grab(image=image, timestamp=time.time(), camera_id=self.source.camera_id), self.stop_event)
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


class _CaptureLoop:
    """The main loop's state: fps cap per source, novelty gate, sequence numbers, sending."""

    def __init__(
        self, cfg: CaptureConfig, readers: list[SourceReader], sender: FrameSender, pace: Pace, stop: threading.Event
    ) -> None:
        self._cfg, self._readers, self._sender, self._pace, self._stop = cfg, readers, sender, pace, stop
        self._period = 1.0 / cfg.fps
        self._due = [0.0] * len(readers)
        self._gates: dict[int, NoveltyGate] = {}  # per camera id
        self._seq: dict[int, int] = {}  # per camera id: frames sent
        self._ended: set[int] = set()  # readers whose end-of-stream was sent
        self._stale: set[int] = set()  # readers the watchdog has reported stale (until they deliver again)
        self.kept = self.skipped_novelty = 0

    def poll(self) -> float:
        """Take and send what is due; return how long the loop may sleep before something is due."""
        now = time.monotonic()
        sleep = 0.5
        max_age = max(1.0, 3 * self._period) if self._pace == "realtime" else None
        for i, reader in enumerate(self._readers):
            reader.check()
            if self._pace == "realtime" and now < self._due[i] - 0.25 * self._period:
                sleep = min(sleep, self._due[i] - 0.25 * self._period - now)
                continue
            grab = reader.read_latest(None if reader.keep_all else max_age)
            if grab is None:
                continue
            if self._pace == "realtime":
                self._due[i] = max(self._due[i] + self._period, now - 0.5 * self._period)
            else:
                sleep = 0.0
            self._process(i, grab)
        return sleep

    def _process(self, index: int, grab: _Grab) -> None:
        camera = self._cfg.camera_id_base + index if grab.camera_id is None else grab.camera_id
        gate = self._gates.get(camera)
        if gate is None:
            threshold = self._cfg.novelty_threshold
            if threshold is None:  # recordings: every frame was wanted; live: skip a camera standing still
                threshold = 0.0 if self._readers[index].source.finite else LIVE_NOVELTY_THRESHOLD
            gate = self._gates[camera] = NoveltyGate(threshold)
        if not gate.admit(grab.image):
            self.skipped_novelty += 1
            return
        self.kept += 1
        seq = self._seq.get(camera, 0)
        frame = Frame(camera_id=camera, seq=seq, timestamp=grab.timestamp, image=grab.image)
        self._seq[camera] = seq + 1
        if not self._sender.lossless:
            self._sender.send(frame, self._cfg.jpeg_quality)
            return
        while not self._sender.send(frame, self._cfg.jpeg_quality, timeout_s=LOSSLESS_RETRY_S):
            if self._stop.is_set():
                return

    def send_ends(self) -> None:
        """Send the end-of-stream message of each finite source that has run out (once each).

        Waited for like a lossless frame (until `stop`), or up to END_TIMEOUT_S by a lossy sender.
        """
        for i, reader in enumerate(self._readers):
            if i in self._ended or not (reader.exhausted and reader.done):
                continue
            camera = self._cfg.camera_id_base + i
            frames = self._seq.get(camera, 0)
            if self._sender.lossless:
                while not self._sender.send_end(camera, frames, LOSSLESS_RETRY_S):
                    if self._stop.is_set():
                        return
            elif not self._sender.send_end(camera, frames, END_TIMEOUT_S):
                log.warning("end of %s not delivered: no trainer took it within %.0f s", reader.source.name, END_TIMEOUT_S)
            self._ended.add(i)
            log.info("%s ended after %d frames sent as camera %d; told the trainer", reader.source.name, frames, camera)

    def watch(self) -> None:
        """The watchdog: log once when a live source goes stale (no frame for `capture.read_timeout_s`,
        whether or not its backend can time out a read) and once when it delivers again."""
        now = time.monotonic()
        for i, reader in enumerate(self._readers):
            stale = reader.state(now) == "stale"
            if stale and i not in self._stale:
                self._stale.add(i)
                log.warning(
                    "%s is stale: no frame for %g s (capture.read_timeout_s); reopened when its read fails",
                    reader.source.name, self._cfg.read_timeout_s,
                )
            elif not stale and i in self._stale:
                self._stale.discard(i)
                log.info("%s delivers again", reader.source.name)

    def source_status(self) -> list[dict]:
        """Each source's state for the status file (`SourceReader.status`), in source order."""
        now = time.monotonic()
        return [reader.status(now) for reader in self._readers]

    def stats(self) -> CaptureStats:
        sender = self._sender.stats
        return CaptureStats(
            frames_read=sum(r.frames_read for r in self._readers),
            kept=self.kept,
            skipped_novelty=self.skipped_novelty,
            stale=sum(r.stale for r in self._readers),
            sent=sender.sent,
            dropped=sender.dropped,
            reconnects=sum(r.reconnects for r in self._readers),
        )


def run_capture(
    capture: CaptureConfig,
    wire: WireConfig,
    stop: threading.Event,
    *,
    lossless: Optional[bool] = None,
    pace: Pace = "realtime",
    log_every_s: float = 10.0,
    status_path: Optional[Path] = None,
) -> CaptureStats:
    """Stream every source in `capture.sources` to `wire.endpoint` until `stop` is set or all finite sources end.

    `pace="realtime"` plays recordings at their recorded speed and caps each source at `capture.fps`;
    `pace="asap"` hands over every frame as fast as it can be read (offline replay; combine with
    `lossless=True` to go exactly as fast as the trainer consumes). `lossless=None` takes
    `capture.lossless`, whose default is lossless exactly when every source is finite: a file or
    folder then waits for a connected trainer and loses no frame, and each camera's end is sent on
    the wire (`wire.EndOfStream`) so the trainer stops waiting for more. A file, folder or glob that
    cannot be opened, or a bad endpoint, raises SourceError / EndpointError before anything is sent; a
    live source that is not there is waited for (state "waiting"). `status_path` gets the stats as JSON
    about once a second, with each source's `SourceReader.status` under "sources" (for the `run`
    supervisor's status line).
    """
    security = WireSecurity.from_config(wire)  # loaded once: for the sender and any subscription source
    sources = [open_source(spec, capture, wire, security) for spec in capture.sources]
    if lossless is None:
        lossless = capture.lossless if capture.lossless is not None else all(src.finite for src in sources)
    wake, halt = threading.Event(), threading.Event()
    with FrameSender(wire.endpoint, hwm=wire.send_hwm, lossless=lossless, publish=wire.publish, security=security) as sender:
        readers = [
            SourceReader(src, capture, pace=pace, wake=wake, halt=halt, lossless=lossless, name=f"capture-{i}")
            for i, src in enumerate(sources)
        ]
        loop = _CaptureLoop(capture, readers, sender, pace, stop)
        try:
            for reader in readers:
                reader.start()
            for reader in readers:
                if not reader.source.live:  # a live source absent at start is waited for, not an error
                    reader.wait_opened(stop)
            log.info(
                "capturing %s -> %s%s%s", ", ".join(s.name for s in sources), wire.endpoint,
                f" (latest frames on {sender.publish_endpoint})" if sender.publish_endpoint else "",
                " losslessly (waits for the trainer)" if lossless else "",
            )
            next_log = time.monotonic() + log_every_s
            next_status = time.monotonic() if status_path is not None else float("inf")
            while not stop.is_set():
                wake.clear()
                sleep = loop.poll()
                loop.send_ends()
                loop.watch()
                if all(reader.done for reader in readers):
                    for reader in readers:
                        reader.check()
                    break
                now = time.monotonic()
                if now >= next_log:
                    log.info("capture: %s", loop.stats().line())
                    next_log += log_every_s
                if status_path is not None and now >= next_status:
                    write_status(status_path, {"time": time.time(), **asdict(loop.stats()), "sources": loop.source_status()})
                    next_status = now + STATUS_EVERY_S
                wake.wait(min(sleep, max(0.0, min(next_log, next_status) - time.monotonic())))
        finally:
            halt.set()
            for reader in readers:
                reader.join(JOIN_TIMEOUT_S)
        stats = loop.stats()
    log.info("capture finished: %s", stats.line())
    return stats


def stop_on_signals(stop: threading.Event) -> None:
    """SIGINT / SIGTERM only set `stop`; the loop notices and shuts down cleanly (flushing if lossless)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
