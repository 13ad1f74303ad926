"""One background-thread lifecycle for every worker: start → initialize → loop → shutdown, errors kept.

The pattern of huey's consumer (`huey/consumer.py`, `BaseProcess` → `Worker`): a subclass says what
one turn of its loop does and what it sets up and tears down; this class owns the thread, the stop
event and the error. A worker is used by capture's source readers (agent/robot/capture.py), the
trainer's ingest thread (trainer/ingest.py), the background ONNX exporter (export/exporter.py), the
runtime's version watcher (agent/robot/version_watcher.py) and replay's progress line (agent/replay.py).

Rules every worker keeps:
- `loop_once()` runs until the stop event is set or it returns False (its work is done: a source
  ran out, a queue was closed). It must return within about a poll interval so a stop is noticed.
- An exception in `initialize` or `loop_once` ends the thread and is stored; the owner's next
  `check()` re-raises it on the owner's thread: our own errors (`ByolAgentError`, one-line
  messages meant for the user) as they are, anything else (a bug) wrapped in a RuntimeError that
  names the worker. Nothing dies silently with a thread.
- `shutdown()` always runs, on the worker's thread, after the loop ends for any reason.
- `stop()` sets the event, calls `wake()` (for workers blocked on a condition) and joins with a
  time limit; a worker stuck in a device call is reported, never waited on forever.
"""

from __future__ import annotations

import logging
import threading
from typing import Optional

from agent.core.errors import ByolAgentError

log = logging.getLogger(__name__)


class Worker:
    """A daemon thread running `initialize()`, then `loop_once()` until stopped, then `shutdown()`.

    `name`: the thread's name and the worker's name in errors ("ingest thread failed: ...").
    `stop_event`: an event shared with sibling workers (one event stops them all); a private one
    when None.
    """

    def __init__(self, name: str, stop_event: Optional[threading.Event] = None) -> None:
        self.name = name
        self.stop_event = stop_event if stop_event is not None else threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._worker_main, name=name, daemon=True)

    # -- what a subclass provides ---------------------------------------------------------------

    def initialize(self) -> None:
        """Set-up on the worker's thread (open a device, a socket); raising here ends the worker."""

    def loop_once(self) -> Optional[bool]:
        """One turn of work; return False when there is nothing more to do. Called until stopped."""
        raise NotImplementedError

    def shutdown(self) -> None:
        """Tear-down on the worker's thread; runs after every ending (stop, done, error)."""

    def wake(self) -> None:
        """Interrupt a wait inside `loop_once` so a stop is seen at once (workers that block override it)."""

    def on_error(self, exc: BaseException) -> None:
        """Called on the worker's thread when `exc` ended it (before `shutdown`); the error is already stored."""

    # -- the lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    @property
    def error(self) -> Optional[BaseException]:
        return self._error

    def check(self) -> None:
        """Re-raise, on the caller's thread, the error that ended this worker (if any).

        Raises the stored `ByolAgentError` itself, or RuntimeError("NAME thread failed: ...") from it.
        """
        error = self._error
        if error is None:
            return
        if isinstance(error, ByolAgentError):
            raise error
        raise RuntimeError(f"{self.name} thread failed: {error!r}") from error

    def stop(self, timeout_s: Optional[float] = 5.0) -> bool:
        """Ask the worker to stop and wait up to `timeout_s`; True once its thread has ended."""
        self.stop_event.set()
        self.wake()
        return self.join(timeout_s)

    def join(self, timeout_s: Optional[float]) -> bool:
        """Wait up to `timeout_s` for the thread to end (logged when it does not); True once it has."""
        if self._thread.ident is None:  # never started
            return True
        if self._thread is threading.current_thread():  # stopped from its own thread (a callback it runs): it
            return False  # ends when that callback returns and the loop sees the stop event; never join oneself
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning(
                "%s did not stop within %.1f s (blocked in a device or system call?)", self.name, timeout_s or 0.0
            )
            return False
        return True

    def _worker_main(self) -> None:
        try:
            self.initialize()
            while not self.stop_event.is_set():
                if self.loop_once() is False:
                    break
        except Exception as exc:  # stored for the owner's thread, which re-raises it in check()
            self._error = exc
            self.on_error(exc)
        finally:
            self.shutdown()
