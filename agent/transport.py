"""ZeroMQ transport for frames: capture PUSHes to the trainer's PULL, and may PUB the newest frame.

Capture must never wait for a slow or absent trainer, so the PUSH socket sets ZMQ_IMMEDIATE (no
queue builds up for a peer that is not there), a small send HWM, and sends with NOBLOCK: a frame that
does not fit is dropped and counted. `lossless=True` waits instead, for offline replay that should go
exactly as fast as training consumes. Many capture processes connect to one trainer's bound PULL.

Latest-frame consumers subscribe with ZMQ_CONFLATE, which keeps only the newest message; that is why
a frame is a single message (CONFLATE does not work with multipart).

ZeroMQ sockets are not thread-safe: each object here must be used (and closed) by one thread.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from dataclasses import dataclass
from typing import Optional

import zmq

from agent.errors import EndpointError
from agent.wire import Frame, FrameEncoder, WireError, decode_frame, subscription_prefix

log = logging.getLogger(__name__)

_TCP = re.compile(r"^tcp://(?P<host>\[[^\]]+\]|[^:/\[\]]+):(?P<port>\*|\d+)$")
LOSSLESS_LINGER_S = 10.0


def validate_endpoint(endpoint: str, *, bind: bool) -> None:
    """Raise EndpointError (one line) for an endpoint ZeroMQ would reject or could never reach.

    libzmq resolves a connecting socket's host lazily and retries forever, so an unresolvable host
    would otherwise look like a trainer that is merely absent; resolve it here instead.
    """
    if endpoint.startswith(("ipc://", "inproc://")):
        if endpoint.split("://", 1)[1]:
            return
        raise EndpointError(f"endpoint {endpoint!r} has an empty path")
    match = _TCP.match(endpoint)
    if match is None:
        raise EndpointError(f"malformed endpoint {endpoint!r}: expected tcp://HOST:PORT, ipc://PATH or inproc://NAME")
    host, port = match["host"].strip("[]"), match["port"]
    if port == "*":
        if not bind:
            raise EndpointError(f"endpoint {endpoint!r}: a connecting socket needs a port number, not '*'")
        return
    if not 0 < int(port) < 65536:
        raise EndpointError(f"endpoint {endpoint!r}: port {port} is out of range 1-65535")
    if bind or host == "*":
        return
    try:
        socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise EndpointError(f"endpoint {endpoint!r}: cannot resolve host {host!r} ({exc.strerror})") from None


def _bind(sock: zmq.Socket, endpoint: str) -> str:
    validate_endpoint(endpoint, bind=True)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        raise EndpointError(f"cannot bind {endpoint}: {exc.strerror}") from None
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def _connect(sock: zmq.Socket, endpoint: str) -> None:
    validate_endpoint(endpoint, bind=False)
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        raise EndpointError(f"cannot connect to {endpoint}: {exc.strerror}") from None


def _timeout_ms(timeout_s: Optional[float]) -> Optional[int]:
    return None if timeout_s is None else max(0, int(timeout_s * 1000))


@dataclass(frozen=True)
class SenderStats:
    sent: int = 0
    dropped: int = 0
    published: int = 0


@dataclass(frozen=True)
class ReceiverStats:
    received: int = 0
    malformed: int = 0
    last_error: Optional[str] = None


class FrameSender:
    """Capture's side of the wire: PUSH to the trainer (connect), optional PUB for latest-frame readers (bind).

    Not thread-safe: create, use and close it from one thread.
    """

    def __init__(self, endpoint: str, *, hwm: int, lossless: bool = False, publish: Optional[str] = None) -> None:
        self.endpoint = endpoint
        self.lossless = lossless
        self.publish_endpoint: Optional[str] = None
        self._sent = self._dropped = self._published = 0
        self._encoder = FrameEncoder()
        self._ctx = zmq.Context(io_threads=1)
        self._pub: Optional[zmq.Socket] = None
        self._push = self._ctx.socket(zmq.PUSH)
        try:
            self._push.setsockopt(zmq.IMMEDIATE, 1)
            self._push.setsockopt(zmq.SNDHWM, hwm)
            _connect(self._push, endpoint)
            if publish is not None:
                self._pub = self._ctx.socket(zmq.PUB)
                self._pub.setsockopt(zmq.CONFLATE, 1)  # per subscriber, an unsent frame is replaced by a newer one
                self.publish_endpoint = _bind(self._pub, publish)
        except Exception:
            self.close()
            raise

    @property
    def stats(self) -> SenderStats:
        return SenderStats(sent=self._sent, dropped=self._dropped, published=self._published)

    def send(self, frame: Frame, jpeg_quality: Optional[int] = None, timeout_s: Optional[float] = None) -> bool:
        """Send one frame; True if it was queued for the trainer.

        Lossy mode never waits: a full queue or no trainer drops the frame and counts it. Lossless
        mode waits for room up to `timeout_s` (None = forever) and returns False on timeout without
        counting a drop, so the caller can retry or give up on shutdown.
        """
        data = self._encoder.encode(frame, jpeg_quality)  # reused buffer: every send below must copy
        if self._pub is not None:
            try:
                self._pub.send(data, zmq.NOBLOCK, copy=True)
                self._published += 1
            except zmq.Again:
                pass
        if self.lossless:
            if timeout_s is not None and not self._push.poll(_timeout_ms(timeout_s), zmq.POLLOUT):
                return False
            self._push.send(data, copy=True)
        else:
            try:
                self._push.send(data, zmq.NOBLOCK, copy=True)
            except zmq.Again:
                self._dropped += 1
                return False
        self._sent += 1
        return True

    def close(self, linger_s: Optional[float] = None) -> None:
        """Close the sockets; lossless mode first lets queued frames reach the trainer (default 10 s)."""
        if linger_s is None:
            linger_s = LOSSLESS_LINGER_S if self.lossless else 0.0
        self._push.close(linger=int(linger_s * 1000))
        if self._pub is not None:
            self._pub.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> "FrameSender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Inbox:
    """Receiving half shared by the PULL and SUB readers: poll, decode, count and drop garbage."""

    endpoint: str

    def __init__(self, kind: int) -> None:
        self._received = self._malformed = 0
        self._last_error: Optional[str] = None
        self._ctx = zmq.Context(io_threads=1)
        self._sock = self._ctx.socket(kind)
        self._sock.setsockopt(zmq.LINGER, 0)

    @property
    def stats(self) -> ReceiverStats:
        return ReceiverStats(received=self._received, malformed=self._malformed, last_error=self._last_error)

    def _next_frame(self, timeout_s: Optional[float]) -> Optional[Frame]:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:  # a queued message needs no poll (one syscall less per frame under load)
                msg = self._sock.recv(zmq.NOBLOCK, copy=False)  # zero-copy: measured faster for 150 kB+ frames
            except zmq.Again:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not self._sock.poll(_timeout_ms(remaining), zmq.POLLIN):
                    return None
                continue
            try:
                frame = decode_frame(msg.buffer)
            except WireError as exc:
                self._count_malformed(exc)
                continue
            self._received += 1
            return frame

    def _count_malformed(self, exc: WireError) -> None:
        self._malformed += 1
        self._last_error = str(exc)
        if self._malformed == 1 or self._malformed % 1000 == 0:
            log.warning("dropped %d malformed message(s) on %s; latest: %s", self._malformed, self.endpoint, exc)

    def close(self) -> None:
        self._sock.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> "_Inbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FrameReceiver(_Inbox):
    """The trainer's side: binds a PULL that any number of captures connect to.

    Malformed, foreign or truncated messages are counted and dropped; `recv` never raises on input.
    Not thread-safe: create, use and close it from one thread.
    """

    def __init__(self, endpoint: str, *, hwm: int) -> None:
        super().__init__(zmq.PULL)
        self.endpoint = endpoint
        try:
            self._sock.setsockopt(zmq.RCVHWM, hwm)
            self.endpoint = _bind(self._sock, endpoint)
        except Exception:
            self.close()
            raise

    def recv(self, timeout_s: Optional[float]) -> Optional[Frame]:
        """Next valid frame, or None if none arrived within `timeout_s` (None = wait forever, 0 = poll)."""
        return self._next_frame(timeout_s)


class LatestFrameSubscriber(_Inbox):
    """Newest frame only, from a capture's PUB: for consumers that want freshness, not completeness.

    ZMQ_CONFLATE keeps a single message in the queue, so a slow reader sees the newest frame and
    memory stays flat however far behind it falls. Not thread-safe: use from one thread.
    """

    def __init__(self, endpoint: str, camera_id: Optional[int] = None) -> None:
        super().__init__(zmq.SUB)
        self.endpoint = endpoint
        try:
            self._sock.setsockopt(zmq.CONFLATE, 1)
            self._sock.setsockopt(zmq.SUBSCRIBE, subscription_prefix(camera_id))
            _connect(self._sock, endpoint)
        except Exception:
            self.close()
            raise

    def latest(self, timeout_s: Optional[float]) -> Optional[Frame]:
        """The newest frame not yet returned, waiting up to `timeout_s` for one; None on timeout."""
        return self._next_frame(timeout_s)
