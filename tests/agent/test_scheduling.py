"""A job started at real-time scheduling (SVT-AV1 hands SCHED_FIFO 99 down as root) leaves it, in one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

# Runs the CLI's entry point as the console script does, then prints the policy the process ended at.
SNIPPET = (
    "import os, sys; sys.argv = ['byol-agent', *sys.argv[1:]]; from agent.cli import main; rc = main(); "
    "print('policy', os.sched_getscheduler(0), 'rc', rc)"
)


def _realtime_allowed() -> bool:
    if shutil.which("chrt") is None or not hasattr(os, "sched_getscheduler"):
        return False
    return subprocess.run(["chrt", "-f", "1", "true"], capture_output=True, timeout=30).returncode == 0


pytestmark = [
    pytest.mark.slow,  # starts the CLI in subprocesses
    pytest.mark.skipif(not _realtime_allowed(), reason="real-time scheduling is not permitted here"),
]


def _cli_at_fifo(*words: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["chrt", "-f", "10", sys.executable, "-c", SNIPPET, *words],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_background_job_started_at_real_time_priority_leaves_it_and_says_so(tmp_path) -> None:
    done = _cli_at_fifo("eval", "--encoder", str(tmp_path / "none"), "--data", "digits")
    assert f"policy {os.SCHED_OTHER} rc 2" in done.stdout, done.stdout + done.stderr
    assert done.stderr.splitlines()[0] == (
        "byol-agent eval: started at real-time scheduling (SCHED_FIFO 10), inherited from what started it; running "
        "at SCHED_OTHER instead (a background job must not starve the robot's processes)"
    ), done.stderr


def test_the_runtime_keeps_the_policy_it_was_started_with(tmp_path) -> None:
    done = _cli_at_fifo("runtime", "--export-dir", str(tmp_path / "none"), "--source", "demo", "--no-wait")
    assert f"policy {os.SCHED_FIFO} rc 2" in done.stdout, done.stdout + done.stderr
    assert "note: running at real-time scheduling (SCHED_FIFO 10), as started" in done.stderr, done.stderr
