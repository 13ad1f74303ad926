"""Keep this thread's scheduling policy across a call into a library that changes it.

SVT-AV1 (PyAV's `libsvtav1` encoder, v4.1 here) switches the calling thread to SCHED_FIFO at priority 99 when it
runs as root (checked: `os.sched_getscheduler(0)` is 0 before the first encoded frame and 1 after). Threads and
processes started afterwards inherit it; OpenMP threads spinning at real-time priority then starve every other
process on a small machine. tests/conftest.py fails any test that leaves the policy changed.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator


@contextlib.contextmanager
def keep_scheduling() -> Iterator[None]:
    """Put this thread's scheduling policy and priority back to what they were on entry, however the block ends."""
    if not hasattr(os, "sched_getscheduler"):
        yield
        return
    policy, priority = os.sched_getscheduler(0), os.sched_getparam(0).sched_priority
    try:
        yield
    finally:
        if (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority) != (policy, priority):
            os.sched_setscheduler(0, policy, os.sched_param(priority))
