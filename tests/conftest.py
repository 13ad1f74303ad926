"""Shared fixtures: free loopback endpoints (tests run in parallel sessions) and tiny configs."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from tests.scheduling import current_scheduling, restore_scheduling

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# A model small enough that a subprocess trains a few steps in seconds on 2 CPU cores.
TINY_MODEL = [
    "model.encoder=tiny_cnn",
    "model.image_size=32",
    "model.projection_size=32",
    "model.projection_hidden_size=64",
    "train.batch_size=8",
]


def free_tcp_endpoint() -> str:
    """A loopback endpoint whose port was free a moment ago (bind-to-0 then release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def free_endpoint() -> str:
    return free_tcp_endpoint()


SESSION_SCHEDULING = current_scheduling()  # what the test process started with


def _put_back_scheduling(when: str) -> None:
    now = current_scheduling()
    if restore_scheduling(SESSION_SCHEDULING):
        pytest.fail(
            f"this process was at scheduling policy {now} (started at {SESSION_SCHEDULING}) {when}; wrap what "
            "changes it in tests.scheduling.keep_scheduling()",
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def _tests_leave_the_scheduling_policy_as_they_found_it():
    """A test, or a fixture it uses, that leaves this process at another scheduling policy fails, and the policy is
    put back.

    Why: SVT-AV1 (PyAV's libsvtav1 encoder) switches the calling thread to SCHED_FIFO 99 when run as root; every
    thread and subprocess started after it inherits that, and spinning OpenMP threads at real-time priority on a
    2-core machine starved everything else (the CI run that did not finish in 5400 s)."""
    _put_back_scheduling("once the test's fixtures were set up")
    yield
    _put_back_scheduling("after the test")
