"""The ingest thread: frames off the wire into the replay buffer while the trainer trains.

Receiving runs beside training so a slow step never backs up the socket (the capture side would
start dropping). The receiver is created by the caller (a bad endpoint fails at once, on the main
thread) and then owned by this thread, which alone uses and closes it: ZeroMQ sockets are not
thread-safe. An exception here is stored and re-raised on the training thread by `check()`.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional, Protocol, Union

from agent.core.frames import FrameFormatError, fit_frame, to_channels
from agent.core.wire import EndOfStream, Frame
from agent.core.worker import Worker
from trainer.buffer import ReplayBuffer

POLL_S = 0.05


class FrameInbox(Protocol):
    """What ingest reads from: agent.robot.transport.FrameReceiver, built and handed in by the orchestration layer.

    `recv` never raises on bad input (malformed messages are counted in `stats.malformed`, refused
    connections in `stats.refused`); `close` is called by the ingest thread, the inbox's only user.
    """

    endpoint: str

    @property
    def stats(self) -> Any: ...

    def recv(self, timeout_s: Optional[float]) -> Optional[Union[Frame, EndOfStream]]: ...

    def close(self) -> None: ...


def fit_to_buffer(frame: Frame, shape: tuple[int, int, int]) -> Optional[Frame]:
    """The frame resized (and RGB turned gray) to the buffer's frame shape, so a capture configured
    differently still feeds us; None for a gray frame offered to an RGB buffer (it cannot be coloured)."""
    h, w, c = shape
    if frame.image.shape == (h, w, c):
        return frame
    try:
        image = to_channels(frame.image, c)
    except FrameFormatError:
        return None
    image = fit_frame(image, h, w, "crop")
    return Frame(camera_id=frame.camera_id, seq=frame.seq, timestamp=frame.timestamp, image=image)


class Ingestor(Worker):
    """Moves frames from a `FrameInbox` into a `ReplayBuffer` on a background thread (an `agent.core.worker.Worker`).

    `may_take(frames_in)` lets the trainer hold ingestion back (lossless replay: a frame is taken
    only once training has used the previous ones); `wake()` tells a held-back thread to look again.
    `check()` re-raises, on the training thread, whatever stopped this one.
    """

    def __init__(
        self,
        receiver: FrameInbox,
        buffer: ReplayBuffer,
        may_take: Optional[Callable[[int], bool]] = None,
    ) -> None:
        super().__init__("ingest")
        self._receiver = receiver
        self._buffer = buffer
        self._may_take = may_take
        self._wake = threading.Event()
        self.frames_in = 0
        self.frames_rejected = 0
        self.idle_since: Optional[float] = None  # set while receiving finds nothing, None otherwise
        self.arrived = threading.Event()  # set on every stored frame; the trainer clears it
        self.per_camera: dict[int, int] = {}  # frames received by camera id
        self.cameras_seen: set[int] = set()
        self.cameras_ended: set[int] = set()  # cameras whose finite source said it ended (and sent nothing since)

    def idle_for(self) -> float:
        """Seconds the receiver has been polling and finding nothing (0 while frames flow or ingest is held)."""
        since = self.idle_since
        return 0.0 if since is None else time.monotonic() - since

    @property
    def frames_malformed(self) -> int:
        return self._receiver.stats.malformed

    @property
    def connections_refused(self) -> int:
        """Senders whose CURVE handshake failed (no key, or one not authorised)."""
        return self._receiver.stats.refused

    @property
    def input_ended(self) -> bool:
        """Every camera that has sent anything has since said that its source ended (`wire.EndOfStream`)."""
        ended = self.cameras_ended
        return bool(ended) and self.cameras_seen <= ended

    def wait_for_frames(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for a frame to be stored (or the input to end), then re-arm `arrived`."""
        self.arrived.wait(timeout_s)
        self.arrived.clear()

    def wake(self) -> None:
        self._wake.set()

    def loop_once(self) -> None:
        if self._may_take is not None and not self._may_take(self.frames_in):
            self.idle_since = None  # held back: whatever is queued has not been looked at
            self._wake.wait(POLL_S)
            self._wake.clear()
            return
        frame = self._receiver.recv(POLL_S)
        if frame is None:
            if self.idle_since is None:
                self.idle_since = time.monotonic()
            return
        self.idle_since = None
        if isinstance(frame, EndOfStream):
            self.cameras_seen.add(frame.camera_id)
            self.cameras_ended.add(frame.camera_id)
            self.arrived.set()
            return
        self.cameras_seen.add(frame.camera_id)
        self.cameras_ended.discard(frame.camera_id)  # the camera is back (a restarted capture, a new file)
        self.per_camera[frame.camera_id] = self.per_camera.get(frame.camera_id, 0) + 1
        fitted = fit_to_buffer(frame, self._buffer.frame_shape)
        self.frames_in += 1  # counted before it is stored: a reader never sees more stored than received
        stored = fitted is not None and self._buffer.add(fitted)
        self.frames_rejected += not stored
        self.arrived.set()

    def on_error(self, exc: BaseException) -> None:
        self.arrived.set()  # the trainer is woken to see it

    def shutdown(self) -> None:
        self._receiver.close()
