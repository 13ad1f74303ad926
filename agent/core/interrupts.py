"""A Ctrl-C that arrives while a command is starting: never lost, never raised inside an import.

`agent.cli.main` installs `catch_early_interrupts` first thing. A SIGINT then
- is recorded (`take_pending`), so the `StopFlag` a command installs later (train, run, replay, export --watch,
  runtime, capture) starts out set: the command stops at its first look;
- raises KeyboardInterrupt (exit 130, as before) only between imports. Raised inside one, it was swallowed by
  a third-party import's own exception handling (a `train` that never stopped: found by sending SIGINT
  0.05-2.5 s into `train`'s imports, 1 in 25 delays lost it inside numpy's lazy `numpy.linalg`/`_typing`
  import) or left a module half-imported (a later RecursionError in numpy's `__getattr__`). Inside an import
  the interrupt is re-delivered every `RETRY_S` (`_thread.interrupt_main`) until the import is over, or until
  a command's own handler has taken the request.
"""

from __future__ import annotations

import _thread
import signal
import threading
from types import FrameType
from typing import Optional

RETRY_S = 0.05
_IMPORT_MACHINERY = ("<frozen importlib._bootstrap", "importlib/_bootstrap")  # frozen, or from source

_pending: Optional[int] = None


def _in_import(frame: Optional[FrameType]) -> bool:
    while frame is not None:
        if (
            frame.f_code.co_filename.startswith(_IMPORT_MACHINERY[0])
            or _IMPORT_MACHINERY[1] in frame.f_code.co_filename
        ):
            return True
        frame = frame.f_back
    return False


def _redeliver(signum: int) -> None:
    if _pending == signum:  # not yet taken by a command's stop handler
        _thread.interrupt_main(signal.Signals(signum))


def _handle(signum: int, frame: Optional[FrameType]) -> None:
    global _pending
    _pending = signum
    if _in_import(frame):
        timer = threading.Timer(RETRY_S, _redeliver, args=(signum,))
        timer.daemon = True
        timer.start()
        return
    raise KeyboardInterrupt


def catch_early_interrupts() -> None:
    """Handle SIGINT as the module docstring says, until a command installs its own handler (main thread only)."""
    signal.signal(signal.SIGINT, _handle)


def take_pending() -> Optional[int]:
    """The signal number of a SIGINT received before the caller's own handler was installed (once), else None."""
    global _pending
    signum, _pending = _pending, None
    return signum


class StopFlag:
    """Set by SIGINT/SIGTERM; handlers only set the flag (the loop does the work). `event`: the event to set (a new
    one by default). Starts out set when a SIGINT came while the command was starting (`take_pending`)."""

    def __init__(self, event: Optional[threading.Event] = None) -> None:
        self.event = threading.Event() if event is None else event
        self.signum: Optional[int] = None  # the first signal received
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)
        early = take_pending()
        if early is not None:
            self._handle(early, None)

    def _handle(self, signum: int, _frame: object) -> None:
        if self.signum is None:
            self.signum = signum
        self.event.set()

    def wait(self, timeout_s: float) -> bool:
        return self.event.wait(timeout_s)
