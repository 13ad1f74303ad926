"""ZeroMQ transport for frames: capture PUSHes to the trainer's PULL, and may PUB the newest frame.

Capture must never wait for a slow or absent trainer, so the PUSH socket sets ZMQ_IMMEDIATE (no
queue builds up for a peer that is not there), a small send HWM, and sends with NOBLOCK: a frame that
does not fit is dropped and counted. `lossless=True` waits instead, for offline replay that should go
exactly as fast as training consumes. Many capture processes connect to one trainer's bound PULL.

A fleet trainer has one PULL per rank, and a capture connects to all of them: one PUSH
socket per endpoint, balanced here the way one PUSH connected to N peers would be (round robin over
the sockets that can take a frame now; a rank at its HWM or not up yet is skipped, so it gets fewer
frames or none and never stalls the others). Our own sockets rather than libzmq's balancing because
a camera's end-of-stream must reach every rank, after that rank's frames: a single PUSH would hand
it to one peer only, and the other ranks would wait forever. Each socket keeps its own order.

Latest-frame consumers subscribe to the PUB and keep the newest frame of each camera
(`agent/robot/subscriber.py`, `LatestFrameSubscriber`); the PUB queues at most `PUB_HWM` frames per subscriber
and, as ZeroMQ does, drops the newest past that: a burst larger than that, or a link slower than the cameras,
loses frames until there is room again.
Neither side uses ZMQ_CONFLATE: it keeps one message across all cameras, so a subscriber to all of them
saw only the camera sent last (see `LatestFrameSubscriber`).

Limits and memory: receiving sockets set ZMQ_MAXMSGSIZE to `max_message_bytes(max_side)` (+ CURVE overhead), so
libzmq drops the connection of a peer that announces a larger message before allocating it, and
the worst-case memory a receiver queues is `recv_hwm x max_message_bytes(max_side)` per connected
sender (plus the kernel's socket buffers); a latest-frame subscriber holds at most
`(SUB_HWM + MAX_CAMERAS) x max_message_bytes(max_side)`. Sockets that may leave the machine are CURVE-secured
(agent/robot/curve.py).

Endpoints are checked, bound and connected by agent/robot/endpoints.py.

ZeroMQ sockets are not thread-safe: each object here must be used (and closed) by one thread.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

import zmq
from zmq.utils.monitor import recv_monitor_message

from agent.core.backoff import worth_logging
from agent.core.wire import (
    MAX_SIDE,
    Buffer,
    EndOfStream,
    Frame,
    FrameEncoder,
    WireError,
    decode_frame,
    decode_message,
    encode_end_of_stream,
    max_message_bytes,
)
from agent.robot.curve import REFUSED_EVENTS, WireSecurity
from agent.robot.endpoints import bind_socket, connect_socket, validate_endpoint, validate_endpoints

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger(__name__)

LOSSLESS_LINGER_S = 10.0
CURVE_OVERHEAD_BYTES = 256  # > the ~33 bytes CurveZMQ adds to each message (RFC 26 MESSAGE command)
MONITOR_EVERY = 256  # frames between looks at a busy receiver's refused-handshake events
# A capture publishes its cameras back to back each tick: measured on loopback with 8 cameras at 30 fps
# and a subscriber that reads everything, a PUB HWM of 4 dropped 240 of 480 frames (96 px), 16 none.
PUB_HWM = 16
PLAIN = WireSecurity()


def _timeout_ms(timeout_s: Optional[float]) -> Optional[int]:
    return None if timeout_s is None else max(0, int(timeout_s * 1000))


@dataclass(frozen=True)
class SenderStats:
    """Frames queued for the trainer (in total, and per endpoint in the sender's order) or dropped."""

    sent: int = 0
    dropped: int = 0
    sent_per_endpoint: tuple[int, ...] = ()


@dataclass(frozen=True)
class ReceiverStats:
    received: int = 0
    malformed: int = 0
    refused: int = 0  # connections whose CURVE handshake failed: no keys, or a key not authorised
    last_error: Optional[str] = None


class FrameSender:
    """Capture's side of the wire: PUSH to the trainer's ranks (connect), optional PUB for latest-frame readers (bind).

    `endpoint` is one trainer endpoint or a list of them (one per rank of a fleet trainer); frames
    are spread over them (module docstring), end-of-stream goes to each. One endpoint behaves as a
    single PUSH socket always did. Not thread-safe: create, use and close it from one thread.
    """

    def __init__(
        self,
        endpoint: Union[str, Sequence[str]],
        *,
        hwm: int,
        lossless: bool = False,
        publish: Optional[str] = None,
        security: WireSecurity = PLAIN,
    ) -> None:
        """Raises EndpointError (one line) for a bad, duplicate or missing endpoint, an unbindable
        `publish`, or one that leaves the machine without CURVE keys; nothing is sent by then."""
        self.endpoints = validate_endpoints(endpoint, bind=False)
        if publish is not None:
            validate_endpoint(publish, bind=True)
        self.lossless = lossless
        self.publish_endpoint: Optional[str] = None
        self._sent = [0] * len(self.endpoints)
        self._dropped = 0
        self._next = 0  # round robin: the socket tried first for the next frame
        self._ends_owed: dict[int, list[int]] = {}  # camera id -> sockets its end-of-stream has yet to go to
        self._ended = False
        self._encoder = FrameEncoder()
        self._ctx = zmq.Context(io_threads=1)
        self._pub: Optional[zmq.Socket] = None
        self._auth: Optional[ThreadAuthenticator] = None
        self._pushes: list[zmq.Socket] = []
        self._writable = zmq.Poller()
        try:
            for ep in self.endpoints:  # every socket is set up (CURVE checked per endpoint) before any connects
                push = self._ctx.socket(zmq.PUSH)
                self._pushes.append(push)
                push.setsockopt(zmq.IMMEDIATE, 1)
                push.setsockopt(zmq.SNDHWM, hwm)
                security.connect_to(push, ep, security.trainer_key, "wire.trainer_key")
                self._writable.register(push, zmq.POLLOUT)
            for push, ep in zip(self._pushes, self.endpoints):
                connect_socket(push, ep)
            if publish is not None:
                self._pub = self._ctx.socket(zmq.PUB)
                self._pub.setsockopt(zmq.SNDHWM, PUB_HWM)  # per subscriber; frames past it are dropped
                self._auth = security.serve(self._ctx, self._pub, publish)
                self.publish_endpoint = bind_socket(self._pub, publish)
        except Exception:
            self.close()
            raise

    @property
    def stats(self) -> SenderStats:
        return SenderStats(sent=sum(self._sent), dropped=self._dropped, sent_per_endpoint=tuple(self._sent))

    def send(self, frame: Frame, jpeg_quality: Optional[int] = None, timeout_s: Optional[float] = None) -> bool:
        """Send one frame to one of the endpoints; True if it was queued for a trainer rank.

        Lossy mode never waits: when no endpoint can take it (all full or absent) the frame is dropped
        and counted. Lossless mode waits for room on any endpoint up to `timeout_s` (None = forever)
        and returns False on timeout without counting a drop, so the caller can retry or give up on shutdown.
        """
        data = self._encoder.encode(frame, jpeg_quality)  # reused buffer: every send below must copy
        if self._pub is not None:
            try:
                self._pub.send(data, zmq.NOBLOCK, copy=True)
            except zmq.Again:
                pass
        if self._send_to_any(data):
            return True
        if not self.lossless:
            self._dropped += 1
            return False
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._writable.poll(_timeout_ms(remaining)):
                return False
            if self._send_to_any(data):
                return True

    def _send_to_any(self, data: memoryview) -> bool:
        """Queue `data` on the first socket, in round-robin order, that takes it without waiting."""
        count = len(self._pushes)
        if (
            count == 1
        ):  # one endpoint: the single PUSH of before, without the loop (measured: benchmarks/bench_fanout.py)
            try:
                self._pushes[0].send(data, zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return False
            self._sent[0] += 1
            return True
        for _ in range(count):
            i = self._next
            self._next = i + 1 if i + 1 < count else 0
            try:
                self._pushes[i].send(data, zmq.NOBLOCK, copy=True)
            except zmq.Again:
                continue
            self._sent[i] += 1
            return True
        return False

    def send_end(self, camera_id: int, frames_sent: int, timeout_s: Optional[float]) -> bool:
        """Tell every endpoint that camera `camera_id` has ended after `frames_sent` frames in all (`wire.EndOfStream`).

        Each endpoint gets the marker after the frames queued to it. Waits for room up to `timeout_s`
        (None = forever) in either mode, on all endpoints at once: the marker is what lets a trainer
        rank stop waiting for frames. True once every endpoint has it queued; False on timeout (not
        counted as a drop), when the endpoints that had room have theirs: a repeated call sends only
        to the others.
        """
        owed = self._ends_owed.setdefault(camera_id, list(range(len(self._pushes))))
        message = encode_end_of_stream(camera_id, frames_sent, time.time())
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            for i in list(owed):
                try:
                    self._pushes[i].send(message, zmq.NOBLOCK, copy=True)
                except zmq.Again:
                    continue
                owed.remove(i)
                self._ended = True  # close() lingers so that the marker is delivered even by a lossy sender
            if not owed:
                del self._ends_owed[camera_id]
                return True
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            waiting = zmq.Poller()
            for i in owed:
                waiting.register(self._pushes[i], zmq.POLLOUT)
            if not waiting.poll(_timeout_ms(remaining)):
                return False

    def ends_owed(self) -> list[str]:
        """Endpoints some camera's end-of-stream could not be queued to yet (a rank not listening, or full)."""
        return [self.endpoints[i] for i in sorted({i for owed in self._ends_owed.values() for i in owed})]

    def close(self, linger_s: Optional[float] = None) -> None:
        """Close the sockets; lossless mode first lets queued frames reach the trainer (default 10 s)."""
        if linger_s is None:
            linger_s = LOSSLESS_LINGER_S if self.lossless or self._ended else 0.0
        for push in self._pushes:
            push.close(linger=int(linger_s * 1000))
        if self._pub is not None:
            self._pub.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()

    def __enter__(self) -> "FrameSender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Inbox:
    """Receiving half shared by the PULL and SUB readers: poll, decode, count and drop garbage."""

    endpoint: str
    # what a message may be: a frame (the trainer's PULL also takes end-of-stream)
    _decode: Callable[[Buffer, int], Union[Frame, EndOfStream]] = staticmethod(decode_frame)

    def __init__(self, kind: int, max_side: int) -> None:
        if not 0 < max_side <= MAX_SIDE:
            raise ValueError(f"max_side must be in 1..{MAX_SIDE}, got {max_side}")
        self._received = self._malformed = self._refused = 0
        self._last_error: Optional[str] = None
        self._max_side = max_side
        self._ctx = zmq.Context(io_threads=1)
        self._auth: Optional[ThreadAuthenticator] = None
        self._monitor: Optional[zmq.Socket] = None
        self._sock = self._ctx.socket(kind)
        self._sock.setsockopt(zmq.LINGER, 0)
        # libzmq applies the limit to the frame on the wire: under CURVE that is the encrypted message,
        # ~33 bytes more than the plaintext (command name, nonce, MAC, flags), so leave room for it.
        self._sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes(max_side) + CURVE_OVERHEAD_BYTES)

    @property
    def stats(self) -> ReceiverStats:
        return ReceiverStats(
            received=self._received, malformed=self._malformed, refused=self._refused, last_error=self._last_error
        )

    def _serve(self, endpoint: str, security: WireSecurity) -> None:
        """CURVE server setup before binding; refused handshakes are counted from the socket's monitor."""
        validate_endpoint(endpoint, bind=True)
        self._auth = security.serve(self._ctx, self._sock, endpoint)
        if self._auth is not None:
            self._monitor = self._sock.get_monitor_socket(REFUSED_EVENTS)

    def _count_refused(self) -> None:
        while self._monitor is not None:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] & REFUSED_EVENTS:
                self._refused += 1
                if worth_logging(self._refused):
                    log.warning(
                        "refused %d connection(s) on %s: no CURVE key or one not in wire.authorized_keys",
                        self._refused,
                        self.endpoint,
                    )

    def _next_frame(self, timeout_s: Optional[float]) -> Optional[Union[Frame, EndOfStream]]:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:  # a queued message needs no poll (one syscall less per frame under load)
                msg = self._sock.recv(zmq.NOBLOCK, copy=False)  # zero-copy: measured faster for 150 kB+ frames
            except zmq.Again:
                self._count_refused()
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not self._sock.poll(_timeout_ms(remaining), zmq.POLLIN):
                    self._count_refused()
                    return None
                continue
            try:
                frame = self._decode(msg.buffer, self._max_side)
            except WireError as exc:
                self._count_malformed(exc)
                continue
            self._received += 1
            if self._received % MONITOR_EVERY == 0:
                self._count_refused()
            return frame

    def _count_malformed(self, exc: WireError) -> None:
        self._malformed += 1
        self._last_error = str(exc)
        if worth_logging(self._malformed, every=1000):
            log.warning("dropped %d malformed message(s) on %s; latest: %s", self._malformed, self.endpoint, exc)

    def close(self) -> None:
        if self._monitor is not None:
            self._sock.disable_monitor()
            self._monitor.close(linger=0)
        self._sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()

    def __enter__(self) -> "Inbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FrameReceiver(Inbox):
    """The trainer's side: binds a PULL that any number of captures connect to.

    Malformed, foreign or truncated messages are counted and dropped; `recv` never raises on input.
    Frames with a side over `max_side` px are refused (messages past `max_message_bytes(max_side)`
    by libzmq, which disconnects the sender). Not thread-safe: create, use and close it from one thread.
    """

    def __init__(self, endpoint: str, *, hwm: int, max_side: int = MAX_SIDE, security: WireSecurity = PLAIN) -> None:
        super().__init__(zmq.PULL, max_side)
        self.endpoint = endpoint
        try:
            self._sock.setsockopt(zmq.RCVHWM, hwm)
            self._serve(endpoint, security)
            self.endpoint = bind_socket(self._sock, endpoint)
        except Exception:
            self.close()
            raise

    _decode = staticmethod(decode_message)

    def recv(self, timeout_s: Optional[float]) -> Optional[Union[Frame, EndOfStream]]:
        """Next valid frame or end-of-stream message (a camera whose finite source ended), or None if
        nothing arrived within `timeout_s` (None = wait forever, 0 = poll)."""
        return self._next_frame(timeout_s)
