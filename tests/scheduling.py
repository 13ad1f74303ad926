"""Keep this thread's scheduling policy across a call into a library that changes it.

SVT-AV1 (PyAV's `libsvtav1` encoder, v4.1 here) switches the calling thread to SCHED_FIFO at priority 99 when it
runs as root (checked: `os.sched_getscheduler(0)` is 0 before the first encoded frame and 1 after). Threads and
processes started afterwards inherit it; OpenMP threads spinning at real-time priority then starve every other
process on a small machine. tests/conftest.py fails any test that leaves the policy changed.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

Scheduling = tuple[int, int]  # (policy, priority)


def current_scheduling() -> Optional[Scheduling]:
    """This thread's (policy, priority); None where the OS has no sched_getscheduler."""
    if not hasattr(os, "sched_getscheduler"):
        return None
    return os.sched_getscheduler(0), os.sched_getparam(0).sched_priority


def restore_scheduling(saved: Optional[Scheduling]) -> bool:
    """Put this thread back at `saved` (from `current_scheduling`); True when it had changed."""
    if saved is None or current_scheduling() == saved:
        return False
    os.sched_setscheduler(0, saved[0], os.sched_param(saved[1]))
    return True


@contextlib.contextmanager
def keep_scheduling() -> Iterator[None]:
    """Put this thread's scheduling policy and priority back to what they were on entry, however the block ends."""
    saved = current_scheduling()
    try:
        yield
    finally:
        restore_scheduling(saved)
