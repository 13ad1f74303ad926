"""`byol-agent run` as a new user meets it: a swap shows on a slow machine, a second run on busy
ports is one line, a Ctrl-C during start-up is an interruption, a resumed run shows no stale figures.

Real processes on loopback, the demo source, a tiny encoder. Waits are on what the run prints or writes
(its start line, its first status line, the exporter's status file), never on a fixed sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from agent.core.atomic import write_status
from tests.conftest import REPO, TINY_MODEL, free_tcp_endpoint

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "agent.cli", "run"]
SMALL = [
    *TINY_MODEL,
    "capture.height=32",
    "capture.width=32",
    "buffer.min_fill=16",
    "train.threads=1",
    "run.status_every_s=0.5",
    "runtime.poll_interval_s=0.2",
]


def _ports() -> list[str]:
    return [f"wire.endpoint={free_tcp_endpoint()}", f"wire.publish={free_tcp_endpoint()}"]


def _wait_for_output(proc: subprocess.Popen, log_path: Path, needle: str, timeout_s: float = 120.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if needle in text:
            return text
        if proc.poll() is not None:
            raise AssertionError(f"run exited ({proc.returncode}) before printing {needle!r}:\n{text[-3000:]}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"no {needle!r} within {timeout_s} s:\n{log_path.read_text()[-3000:]}")


def _status(run_dir: Path, name: str) -> dict:
    try:
        return json.loads((run_dir / f"status-{name}.json").read_text())
    except (OSError, ValueError):
        return {}


def test_a_run_too_slow_to_reach_every_steps_still_publishes_and_swaps_by_time(tmp_path: Path) -> None:
    """The step budget is never reached (as on a loaded 2-core machine in 300 s); `export.every_seconds`
    still gives versions while the run runs, the runtime swaps and serves, and the last line says so.
    Before: no checkpoint existed to export from until shutdown, so v1 came at the end and nothing swapped.
    Waits for the exporter's and the runtime's status files (no fixed duration: load only makes it slower)."""
    run_dir, log_path = tmp_path / "run", tmp_path / "run.log"
    proc = subprocess.Popen(
        [
            *CLI,
            "--run-dir",
            str(run_dir),
            "--duration",
            "600",
            *SMALL,
            *_ports(),
            "train.checkpoint_every=100000",
            "export.every_steps=100000",
            "export.every_seconds=2",
        ],
        cwd=REPO,
        stdout=open(log_path, "wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 240
        while not (
            (_status(run_dir, "exporter").get("exports") or 0) >= 2
            and (_status(run_dir, "runtime").get("swaps") or 0) >= 1
            and (_status(run_dir, "runtime").get("calls") or 0) > 0
        ):
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text()
    assert proc.returncode == 0, text[-3000:]
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    stop_time = next(e["time"] for e in events if e.get("event") == "stop")
    assert len([e for e in events if e.get("event") == "export" and e["time"] < stop_time]) >= 2, events
    runtime = _status(run_dir, "runtime")
    last = text.strip().splitlines()[-1]
    assert (
        last.startswith("byol-agent run: published ") and f"({runtime['served_swaps']} swap(s) between calls)" in last
    )
    assert runtime["served_swaps"] >= 1 and f"call(s) on v{runtime['first_served_version']} to " in last, last


def test_a_second_run_on_busy_ports_is_one_line_naming_the_port_and_the_fix(tmp_path: Path) -> None:
    """Before: 15 s, three capture restarts and "trained on nothing"; the bind error only in trainer.log."""
    endpoint = free_tcp_endpoint()
    ctx = zmq.Context.instance()
    first = ctx.socket(zmq.PULL)  # what the first run's trainer holds
    first.bind(endpoint)
    try:
        done = subprocess.run(
            [
                *CLI,
                "--run-dir",
                str(tmp_path / "run"),
                "--duration",
                "24",
                *SMALL,
                f"wire.endpoint={endpoint}",
                f"wire.publish={free_tcp_endpoint()}",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        first.close(linger=0)
    assert done.returncode == 2, done.stderr[-3000:]
    line = done.stderr.strip()
    assert "\n" not in line and f"cannot bind {endpoint}" in line and "wire.endpoint=" in line, line
    assert not (tmp_path / "run").exists()  # nothing started, so nothing restarted


def test_ctrl_c_during_start_up_is_an_interruption_and_old_figures_are_not_shown(tmp_path: Path) -> None:
    """A resumed run showed the previous session's trainer figures in its first seconds, and a Ctrl-C before
    the first step ended with exit 1 and "trained on nothing", as if the run had failed."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_status(run_dir / "status-trainer.json", {"step": 987654, "buffer_size": 4096, "time": time.time() - 3600})
    os.utime(run_dir / "status-trainer.json", (time.time() - 3600, time.time() - 3600))  # the last session's
    log_path = tmp_path / "run.log"
    proc = subprocess.Popen(
        [
            *CLI,
            "--run-dir",
            str(run_dir),
            "--duration",
            "300",
            *SMALL,
            *_ports(),
            "buffer.min_fill=4096",
            "buffer.capacity_frames=4096",
        ],  # no step can happen in this test
        cwd=REPO,
        stdout=open(log_path, "wb"),
        stderr=subprocess.STDOUT,
    )
    text = _wait_for_output(proc, log_path, "| runtime v")  # the supervisor's first status line
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    text = log_path.read_text()
    assert "987654" not in text, text[-3000:]
    assert proc.returncode == 130, text[-3000:]
    assert "byol-agent run: interrupted before the first training step" in text and "trained on nothing" not in text
