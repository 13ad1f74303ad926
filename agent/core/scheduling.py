"""Real-time scheduling a job inherited: leave it, and say so.

A process started by one at SCHED_FIFO/SCHED_RR runs at that policy too. SVT-AV1 (LeRobot's default video encoder)
switches its caller to SCHED_FIFO 99 when run as root, so a recording tool, a launch file or a test harness can hand
it down unnoticed. At real-time priority the learner's spinning BLAS/OpenMP threads starve every normal process on a
small robot computer (on 2 cores they stalled the whole machine for an hour), and they would preempt the robot's own
real-time loops of lower priority. The learner, exporter, capture and evaluation are background jobs, so the CLI
moves them to SCHED_OTHER; the runtime, which may belong inside a real-time policy process, is only told.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

_NAMES = {getattr(os, name): name for name in ("SCHED_FIFO", "SCHED_RR") if hasattr(os, name)}


def realtime_policy() -> Optional[str]:
    """`"SCHED_FIFO 99"` when this thread runs at a real-time policy, else None (also where the OS cannot say)."""
    if not hasattr(os, "sched_getscheduler"):
        return None
    policy = os.sched_getscheduler(0)
    return f"{_NAMES[policy]} {os.sched_getparam(0).sched_priority}" if policy in _NAMES else None


def leave_realtime() -> None:
    """Move every thread of this process to SCHED_OTHER (priority 0). OSError if the OS refuses."""
    tasks = Path("/proc/self/task")
    tids = [int(p.name) for p in tasks.iterdir()] if tasks.is_dir() else [0]
    for tid in tids:
        try:
            os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
        except ProcessLookupError:  # a thread that ended meanwhile
            continue
