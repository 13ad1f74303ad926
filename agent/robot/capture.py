"""The capture process: sources → fit to the stored size → novelty gate → ZeroMQ.

Each source gets one background read loop (`SourceReader`, agent/robot/source_reader.py):
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

import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

from agent.core.atomic import append_record, write_status
from agent.core.config import CaptureConfig, Pace, WireConfig
from agent.core.frames import NoveltyGate, novelty_threshold
from agent.core.interrupts import StopFlag
from agent.core.wire import Frame
from agent.robot.curve import WireSecurity
from agent.robot.source_reader import Grab, SourceReader
from agent.robot.sources import check_source_options, expand_sources, open_source
from agent.robot.transport import FrameSender

log = logging.getLogger(__name__)

LOSSLESS_RETRY_S = 0.2
END_TIMEOUT_S = 5.0  # a lossy capture waits this long for a trainer to take a camera's end-of-stream
JOIN_TIMEOUT_S = 2.0
BLOCKED_LOG_S = 5.0  # a lossless capture whose frames no trainer takes says so after this, then at 2x, 4x, ...
STATUS_EVERY_S = 1.0
HISTORY_EVERY_S = 10.0  # capture.jsonl: one record of the counters this often, and one at the end


@dataclass(frozen=True)
class CaptureStats:
    """What happened to the frames: read from the sources, then kept by the novelty gate (or skipped), refused
    as stale or superseded by a newer frame of their camera before the fps cap let one through (frames_read =
    kept + skipped_novelty + stale + superseded + at most one frame per camera still waiting); kept frames
    were sent to the trainer or dropped because it was slow or absent; sources reopened."""

    frames_read: int = 0
    kept: int = 0
    skipped_novelty: int = 0
    stale: int = 0
    superseded: int = 0
    sent: int = 0
    dropped: int = 0
    reconnects: int = 0
    sent_per_endpoint: tuple[int, ...] = ()  # in the order of the trainer endpoints (`trainer_endpoints`)

    def line(self) -> str:
        """`name=value` pairs for the log; per-endpoint counts (`sent_per_endpoint=A/B`) only for several endpoints."""
        parts = [f"{name}={value}" for name, value in vars(self).items() if name != "sent_per_endpoint"]
        if len(self.sent_per_endpoint) > 1:
            parts.append("sent_per_endpoint=" + "/".join(str(n) for n in self.sent_per_endpoint))
        return " ".join(parts)


def trainer_endpoints(wire: WireConfig) -> list[str]:
    """Where a capture sends frames: every rank's PULL in `wire.endpoints` (a fleet trainer), else `wire.endpoint`."""
    return list(wire.endpoints) if wire.endpoints else [wire.endpoint]


class _CaptureLoop:
    """The main loop's state: fps cap per source, novelty gate, sequence numbers, sending."""

    def __init__(
        self,
        cfg: CaptureConfig,
        readers: list[SourceReader],
        sender: FrameSender,
        pace: Pace,
        stop: threading.Event,
        tick: Callable[[], None] = lambda: None,
    ) -> None:
        """`tick()` is called while a lossless send waits for a trainer, so stats lines and the status file
        stay fresh (run_capture passes its periodic reporting)."""
        self._cfg, self._readers, self._sender, self._pace, self._stop = cfg, readers, sender, pace, stop
        self._tick = tick
        self._blocked_since: Optional[float] = None
        self._blocked_logged = 0.0  # how long the wait was when it was last logged
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

    def _process(self, index: int, grab: Grab) -> None:
        camera = self._cfg.camera_id_base + index if grab.camera_id is None else grab.camera_id
        gate = self._gates.get(camera)
        if gate is None:
            threshold = novelty_threshold(self._cfg.novelty_threshold, self._readers[index].source.finite)
            gate = self._gates[camera] = NoveltyGate(threshold)
        if not gate.admit(grab.image):
            self.skipped_novelty += 1
            return
        self.kept += 1
        seq = self._seq.get(camera, 0)
        when = grab.timestamp if grab.wire_time is None else grab.wire_time  # a recording's own clock, where it has one
        frame = Frame(camera_id=camera, seq=seq, timestamp=when, image=grab.image)
        self._seq[camera] = seq + 1
        if not self._sender.lossless:
            self._sender.send(frame, self._cfg.jpeg_quality)
            return
        while not self._sender.send(frame, self._cfg.jpeg_quality, timeout_s=LOSSLESS_RETRY_S):
            if self._stop.is_set():
                return
            self._waiting()
        self._blocked_since = None

    def _waiting(self) -> None:
        """A lossless send found no trainer ready to take it: report now and then, keep the status fresh."""
        now = time.monotonic()
        if self._blocked_since is None:
            self._blocked_since, self._blocked_logged = now, 0.0
        waited = now - self._blocked_since
        if waited >= BLOCKED_LOG_S and waited >= 2 * self._blocked_logged:  # after 5 s, 10 s, 20 s, ...
            owed = self._sender.ends_owed()
            what = (
                f"the end of stream is still owed to {', '.join(owed)} after {waited:.0f} s"
                if owed
                else f"no trainer has taken a frame for {waited:.0f} s ({', '.join(self._sender.endpoints)})"
            )
            log.warning(
                "%s: is a trainer (rank) listening there, and does it accept this capture's key "
                "(wire.secret_key / wire.trainer_key)?",
                what,
            )
            self._blocked_logged = waited
        self._tick()

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
                    self._waiting()
                self._blocked_since = None
            elif not self._sender.send_end(camera, frames, END_TIMEOUT_S):
                log.warning(
                    "end of %s not delivered: no trainer took it within %.0f s", reader.source.name, END_TIMEOUT_S
                )
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
                    reader.source.name,
                    self._cfg.read_timeout_s,
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
            superseded=sum(r.superseded for r in self._readers),
            sent=sender.sent,
            dropped=sender.dropped,
            reconnects=sum(r.reconnects for r in self._readers),
            sent_per_endpoint=sender.sent_per_endpoint,
        )


class _Reporting:
    """Capture's periodic output: the stats line every `log_every_s`, the status file about once a second,
    a capture.jsonl record every HISTORY_EVERY_S. Called from the main loop and while a send waits."""

    def __init__(self, log_every_s: float, status_path: Optional[Path], history_path: Optional[Path]) -> None:
        now = time.monotonic()
        self._log_every_s, self._status_path, self._history_path = log_every_s, status_path, history_path
        self._next_log = now + log_every_s
        self._next_status = now if status_path is not None else float("inf")
        self._next_history = now if history_path is not None else float("inf")

    @property
    def next_due(self) -> float:
        return min(self._next_log, self._next_status, self._next_history)

    def __call__(self, loop: "_CaptureLoop") -> None:
        now = time.monotonic()
        if now >= self._next_log:
            log.info("capture: %s", loop.stats().line())
            self._next_log += self._log_every_s
        if self._status_path is not None and now >= self._next_status:
            write_status(
                self._status_path, {"time": time.time(), **asdict(loop.stats()), "sources": loop.source_status()}
            )
            self._next_status = now + STATUS_EVERY_S
        if self._history_path is not None and now >= self._next_history:
            _append_history(self._history_path, loop)
            self._next_history = now + HISTORY_EVERY_S


def run_capture(
    capture: CaptureConfig,
    wire: WireConfig,
    stop: threading.Event,
    *,
    lossless: Optional[bool] = None,
    pace: Pace = "realtime",
    log_every_s: float = 10.0,
    status_path: Optional[Path] = None,
    history_path: Optional[Path] = None,
) -> CaptureStats:
    """Stream every source in `capture.sources` to the trainer until `stop` is set or all finite sources end.

    A spec of several cameras (a robot log with several image topics) is one source per camera
    (`expand_sources`), numbered `capture.camera_id_base` + index in that expanded order.

    The trainer is every endpoint in `wire.endpoints` (one per rank of a fleet trainer; frames are spread
    over the ranks that can take them, each rank gets each camera's end) or else `wire.endpoint`.

    `pace="realtime"` plays recordings at their recorded speed and caps each source at `capture.fps`;
    `pace="asap"` hands over every frame as fast as it can be read (offline replay; combine with
    `lossless=True` to go exactly as fast as the trainer consumes). `lossless=None` takes
    `capture.lossless`, whose default is lossless exactly when every source is finite: a file or
    folder then waits for a connected trainer and loses no frame, and each camera's end is sent on
    the wire (`wire.EndOfStream`) so the trainer stops waiting for more. A file, folder or glob that
    cannot be opened, or a bad, repeated or unreachable endpoint, raises SourceError / EndpointError before anything is
    sent; a live source that is not there is waited for (state "waiting"). `status_path` gets the stats as JSON
    about once a second, with each source's `SourceReader.status` under "sources" (for the `run`
    supervisor's status line). `history_path` (capture.jsonl in a run directory) gets the counters
    appended every HISTORY_EVERY_S and at the end, with frames read per source (in source order)
    under "frames_per_source" and their names under "source_names" (for `byol-agent report`'s frames-over-time plot).
    """
    security = WireSecurity.from_config(wire)  # loaded once: for the sender and any subscription source
    check_source_options(capture)
    sources = [open_source(spec, capture, wire, security) for spec in expand_sources(capture.sources, capture)]
    if lossless is None:
        lossless = capture.lossless if capture.lossless is not None else all(src.finite for src in sources)
    wake, halt = threading.Event(), threading.Event()
    endpoints = trainer_endpoints(wire)
    with FrameSender(
        endpoints, hwm=wire.send_hwm, lossless=lossless, publish=wire.publish, security=security
    ) as sender:
        readers = [
            SourceReader(
                src,
                capture,
                pace=pace,
                wake=wake,
                halt=halt,
                lossless=lossless,
                name=f"capture-{i}",
                start_frame=capture.start_frames[i] if i < len(capture.start_frames) else 0,
            )
            for i, src in enumerate(sources)
        ]
        report = _Reporting(log_every_s, status_path, history_path)
        loop = _CaptureLoop(capture, readers, sender, pace, stop, tick=lambda: report(loop))
        try:
            for reader in readers:
                reader.start()
            for reader in readers:
                if not reader.source.live:  # a live source absent at start is waited for, not an error
                    reader.wait_opened(stop)
            log.info(
                "capturing %s -> %s%s%s",
                ", ".join(s.name for s in sources),
                ", ".join(endpoints),
                f" (latest frames on {sender.publish_endpoint})" if sender.publish_endpoint else "",
                " losslessly (waits for the trainer)" if lossless else "",
            )
            while not stop.is_set():
                wake.clear()
                sleep = loop.poll()
                loop.send_ends()
                loop.watch()
                if all(reader.done for reader in readers):
                    loop.send_ends()  # a reader may have finished after the call above: its end must still go out
                    for reader in readers:
                        reader.check()
                    break
                report(loop)
                wake.wait(min(sleep, max(0.0, report.next_due - time.monotonic())))
        finally:
            halt.set()
            for reader in readers:
                reader.join(JOIN_TIMEOUT_S)
        stats = loop.stats()
        if status_path is not None:  # the final counts: the `run` status line and report read these last
            write_status(status_path, {"time": time.time(), **asdict(stats), "sources": loop.source_status()})
        if history_path is not None:
            _append_history(history_path, loop)
    log.info("capture finished: %s", stats.line())
    return stats


def _append_history(path: Path, loop: "_CaptureLoop") -> None:
    sources = loop.source_status()
    append_record(
        path,
        {
            "time": time.time(),
            **asdict(loop.stats()),
            "source_names": [s["name"] for s in sources],
            "frames_per_source": [s["frames_read"] for s in sources],
        },
    )


def stop_on_signals(stop: threading.Event) -> None:
    """SIGINT / SIGTERM only set `stop`; the loop notices and shuts down cleanly (flushing if lossless)."""
    StopFlag(stop)
