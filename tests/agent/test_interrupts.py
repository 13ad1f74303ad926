"""agent/core/interrupts.py: a SIGINT while a command starts is never lost and never raised inside an import.

In this process, with real signals: pytest runs tests in the main thread, where Python handles signals."""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.core import interrupts
from agent.core.interrupts import StopFlag


@pytest.fixture()
def early_handler():
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    interrupts.take_pending()
    interrupts.catch_early_interrupts()
    yield
    interrupts.take_pending()
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def test_a_sigint_inside_an_import_waits_for_the_import_to_finish(early_handler, tmp_path: Path) -> None:
    """Raised inside an import, the KeyboardInterrupt could be swallowed by the imported library's own handling
    (numpy's lazy imports did) or leave it half-imported; here it comes right after the import instead."""
    (tmp_path / "slow_module_for_interrupts.py").write_text(
        "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(0.3)\nFINISHED = True\n"
    )
    sys.path.insert(0, str(tmp_path))
    imported = False
    try:
        with pytest.raises(KeyboardInterrupt):
            module = importlib.import_module("slow_module_for_interrupts")
            imported = module.FINISHED  # the import ran to its end
            time.sleep(2.0)  # the re-delivered interrupt lands here
            pytest.fail("the interrupt was lost")
        assert imported, "the KeyboardInterrupt was raised inside the import"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("slow_module_for_interrupts", None)


def test_a_stop_handler_installed_after_the_sigint_starts_out_set(early_handler) -> None:
    """A KeyboardInterrupt swallowed by start-up code (as above, inside a library) no longer loses the stop: the
    command's own handler finds the request and acts on it."""
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)
    except KeyboardInterrupt:
        pass  # what a bare `except:` in a library would do with it
    flag = StopFlag()
    assert flag.event.is_set() and flag.signum == signal.SIGINT
    assert interrupts.take_pending() is None  # taken once


def test_capture_stop_handling_takes_an_early_request_too(early_handler) -> None:
    from agent.robot.capture import stop_on_signals

    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    stop = threading.Event()
    stop_on_signals(stop)
    assert stop.is_set()


def test_without_an_early_request_nothing_is_set(early_handler) -> None:
    assert not StopFlag().event.is_set()
