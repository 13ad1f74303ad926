"""The ingest thread: frames off the wire into the replay buffer while the trainer trains.

Receiving runs beside training so a slow step never backs up the socket (the capture side would
start dropping). The receiver is created by the caller (a bad endpoint fails at once, on the main
thread) and then owned by this thread, which alone uses and closes it: ZeroMQ sockets are not
thread-safe. An exception here is stored and re-raised on the training thread by `check()`.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional, Protocol

from agent.core.frames import fit_frame
from agent.core.wire import Frame
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

    def recv(self, timeout_s: Optional[float]) -> Optional[Frame]: ...

    def close(self) -> None: ...


def fit_to_buffer(frame: Frame, shape: tuple[int, int, int]) -> Frame:
    """The frame resized to the buffer's frame shape (a capture configured differently still feeds us)."""
    h, w, _ = shape
    if frame.image.shape[:2] == (h, w):
        return frame
    image = fit_frame(frame.image, h, w, "crop")
    return Frame(camera_id=frame.camera_id, seq=frame.seq, timestamp=frame.timestamp, image=image)


class Ingestor:
    """Moves frames from a `FrameInbox` into a `ReplayBuffer` on a background thread.

    `may_take(frames_in)` lets the trainer hold ingestion back (lossless replay: a frame is taken
    only once training has used the previous ones); `wake()` tells a held-back thread to look again.
    """

    def __init__(
        self,
        receiver: FrameInbox,
        buffer: ReplayBuffer,
        may_take: Optional[Callable[[int], bool]] = None,
    ) -> None:
        self._receiver = receiver
        self._buffer = buffer
        self._may_take = may_take
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._loop, name="ingest", daemon=True)
        self.frames_in = 0
        self.frames_rejected = 0
        self.idle_since: Optional[float] = None  # set while receiving finds nothing, None otherwise
        self.arrived = threading.Event()  # set on every stored frame; the trainer clears it

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

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def check(self) -> None:
        """Re-raise, on the caller's thread, whatever stopped the ingest thread."""
        if self._error is not None:
            raise RuntimeError(f"ingest thread failed: {self._error!r}") from self._error

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                if self._may_take is not None and not self._may_take(self.frames_in):
                    self.idle_since = None  # held back: whatever is queued has not been looked at
                    self._wake.wait(POLL_S)
                    self._wake.clear()
                    continue
                frame = self._receiver.recv(POLL_S)
                if frame is None:
                    if self.idle_since is None:
                        self.idle_since = time.monotonic()
                    continue
                self.idle_since = None
                stored = self._buffer.add(fit_to_buffer(frame, self._buffer.frame_shape))
                self.frames_in += 1
                self.frames_rejected += not stored
                self.arrived.set()
        except Exception as exc:  # stored for the training thread, which re-raises it
            self._error = exc
            self.arrived.set()
        finally:
            self._receiver.close()
