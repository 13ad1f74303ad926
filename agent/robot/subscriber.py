"""Newest frames of every camera from a capture's PUB: `LatestFrameSubscriber` and its drain thread.

For consumers that want freshness, not completeness (a `zmq+tcp://` capture source, a monitor). The
socket and the limits it enforces are those of `agent/robot/transport.py` (`Inbox`); the drain is an
`agent.core.worker.Worker`, the socket's only user while the subscriber is open.
"""

from __future__ import annotations

import threading
import time
from typing import Optional

import numpy as np
import zmq

from agent.core.config import WireConfig
from agent.core.errors import SourceError
from agent.core.wire import MAX_SIDE, Frame, WireError, decode_frame, peek_camera_id, subscription_prefix
from agent.core.worker import Worker
from agent.robot.curve import WireSecurity
from agent.robot.endpoints import connect_socket, validate_endpoint
from agent.robot.source_base import FrameSource
from agent.robot.transport import PLAIN, Inbox

SUB_HWM = 16  # messages libzmq queues for a latest-frame subscriber's drain thread, which empties it at once
MAX_CAMERAS = 32  # cameras a latest-frame subscriber keeps a frame of; frames of more are dropped and counted
DRAIN_POLL_S = 0.1  # how often the drain thread looks whether its subscriber is closing


class LatestFrameSubscriber(Inbox):
    """Newest frame of each camera from a capture's PUB: for consumers that want freshness, not completeness.

    A drain thread, the socket's only user, receives every message as it arrives and keeps just the
    newest per camera, undecoded (the camera id is read from the header by `peek_camera_id`); `latest`
    decodes the one it returns, taking the cameras in turn (the one returned longest ago first). So
    a reader slower than the cameras still gets fresh frames of every camera, and memory stays flat:
    at most SUB_HWM queued plus MAX_CAMERAS kept messages (frames of further cameras are counted as
    malformed and dropped). Measured on loopback, 2-3 cameras sent back to back at 30 fps:

    - ZMQ_CONFLATE (what this did before) keeps one message across all cameras, on the SUB and on
      the PUB alike: a reader saw only the camera sent last (PUB CONFLATE alone delivered 0 of 90
      frames of camera 0 to a subscriber that read everything).
    - No CONFLATE, a small RCVHWM and the newest per camera kept when reading (no thread): fresh while
      each read finds fewer frames than RCVHWM, but a slower reader makes libzmq stop reading the
      TCP socket, the kernel buffers fill with old frames, and at 10 reads/s with RCVHWM 4 (96 px)
      frames were 1.2 s old after 8 s and growing; RCVHWM large enough for the slowest reader costs
      RCVHWM x max_message_bytes.
    - One CONFLATE socket per camera topic needs the camera ids in advance, which "all cameras" does
      not give.

    Use `latest` and `close` from one thread (the drain thread is internal).
    """

    def __init__(
        self,
        endpoint: str,
        camera_id: Optional[int] = None,
        *,
        max_side: int = MAX_SIDE,
        security: WireSecurity = PLAIN,
    ) -> None:
        super().__init__(zmq.SUB, max_side)
        self.endpoint = endpoint
        self._newest: dict[int, zmq.Frame] = {}  # camera id -> its newest message not yet returned
        self._served: dict[int, int] = {}  # camera id -> turn it was last returned at (at most 65,536 ints)
        self._turn = 0
        self._ready = threading.Condition()
        self._drain: Optional[_Drain] = None
        try:
            self._sock.setsockopt(zmq.RCVHWM, SUB_HWM)
            self._sock.setsockopt(zmq.SUBSCRIBE, subscription_prefix(camera_id))
            validate_endpoint(endpoint, bind=False)
            security.connect_to(self._sock, endpoint, security.publisher_key, "wire.publisher_key")
            connect_socket(self._sock, endpoint)
        except Exception:
            self.close()
            raise
        self._drain = _Drain(self)
        self._drain.start()

    def latest(self, timeout_s: Optional[float]) -> Optional[Frame]:
        """The newest frame not yet returned of the camera returned longest ago, waiting up to `timeout_s`
        (None = forever) for one; None on timeout. Re-raises an error that stopped the drain thread."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        drain = self._drain
        assert drain is not None  # started by __init__ (which raises otherwise)
        while True:
            with self._ready:
                while not self._newest:
                    drain.check()
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return None
                    self._ready.wait(remaining)
                camera = min(self._newest, key=lambda cam: self._served.get(cam, -1))
                msg = self._newest.pop(camera)
            try:
                frame = decode_frame(msg.buffer, self._max_side)
            except WireError as exc:
                with self._ready:
                    self._count_malformed(exc)
                continue
            self._turn += 1
            self._served[camera] = self._turn
            self._received += 1
            return frame

    def keep(self, msg: zmq.Frame) -> None:
        """Called by the drain thread with each message: keep it as its camera's newest."""
        try:
            camera = peek_camera_id(msg.buffer)
        except WireError as exc:
            with self._ready:
                self._count_malformed(exc)
            return
        with self._ready:
            if camera not in self._newest and len(self._newest) >= MAX_CAMERAS:
                self._count_malformed(WireError(f"camera {camera}: over {MAX_CAMERAS} cameras with unread frames"))
                return
            self._newest[camera] = msg
            self._ready.notify()

    def wake_readers(self) -> None:
        with self._ready:
            self._ready.notify_all()

    def close(self) -> None:
        """Stop the drain thread (within DRAIN_POLL_S), then close the socket."""
        if self._drain is not None:
            self._drain.stop(timeout_s=None)
        with self._ready:
            self._newest.clear()
        super().close()


class _Drain(Worker):
    """Receives everything as it arrives and hands each message to `LatestFrameSubscriber.keep`.

    A failure (a bug, not bad input) is stored and raised by the subscriber's next `latest`.
    """

    def __init__(self, owner: LatestFrameSubscriber) -> None:
        super().__init__("latest-frame-drain")
        self._owner = owner
        self._sock = owner._sock

    def loop_once(self) -> None:
        try:
            msg = self._sock.recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self._sock.poll(int(DRAIN_POLL_S * 1000), zmq.POLLIN)
            return
        self._owner.keep(msg)

    def on_error(self, exc: BaseException) -> None:
        self._owner.wake_readers()


SUBSCRIBE_PREFIX = "zmq+"


def is_subscription(spec: str) -> bool:
    """ "zmq+tcp://HOST:PORT" or "zmq+ipc://PATH": another capture's PUB."""
    return spec.startswith(SUBSCRIBE_PREFIX)


class SubscriptionSource(FrameSource):
    """Newest frames of another capture process, via its PUB ("zmq+tcp://HOST:PORT", "zmq+ipc://PATH"):
    every camera it publishes, taken in turn (agent/robot/subscriber.py, `LatestFrameSubscriber`)."""

    live = True

    def __init__(
        self,
        endpoint: str,
        wire: Optional[WireConfig] = None,
        timeout_s: float = 5.0,
        security: Optional[WireSecurity] = None,
    ) -> None:
        super().__init__(f"subscription {endpoint!r}")
        self.endpoint, self.timeout_s = endpoint, timeout_s
        self._wire = wire if wire is not None else WireConfig()
        # key files checked now, not at first connect; a capture hands in the keys it loaded for its sender
        self._security = security if security is not None else WireSecurity.from_config(self._wire)
        self._sub: Optional[LatestFrameSubscriber] = None

    def connect(self) -> None:
        self.disconnect()
        self._sub = LatestFrameSubscriber(self.endpoint, max_side=self._wire.max_frame_side, security=self._security)

    def read(self) -> np.ndarray:
        """The newest frame of each publishing camera in turn (`camera_id` says whose)."""
        if self._sub is None:
            raise SourceError(f"{self.name} is not connected")
        frame = self._sub.latest(self.timeout_s)
        if frame is None:
            raise SourceError(f"{self.name}: no frame for {self.timeout_s:g} s")
        self.camera_id = frame.camera_id
        return frame.image

    def disconnect(self) -> None:
        if self._sub is not None:
            self._sub.close()
            self._sub = None
