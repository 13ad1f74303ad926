"""`byol-agent run` as a user runs it: real processes on loopback, the demo source, a tiny encoder.

First run: frames flow, the trainer learns, the exporter publishes, the runtime consumer hot-swaps
to the published encoder; Ctrl-C (SIGINT) leaves a resumable checkpoint and a final export of it.
Second run on the same run dir resumes from that checkpoint instead of starting over.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import pytest

from tests.conftest import REPO, TINY_MODEL, free_tcp_endpoint
from trainer.checkpoint import load_latest_checkpoint

pytestmark = pytest.mark.slow

TINY = [
    *TINY_MODEL,
    "train.checkpoint_every=10",
    "train.metrics_every=5",
    "export.every_steps=10",
    "buffer.min_fill=16",
    "buffer.capacity_frames=256",
    "capture.height=40",
    "capture.width=40",
    "capture.fps=30",
    "run.status_every_s=0.5",
    "runtime.poll_interval_s=0.2",
]


def _start_argv(run_dir: Path) -> list[str]:
    ports = [f"wire.endpoint={free_tcp_endpoint()}", f"wire.publish={free_tcp_endpoint()}"]
    return [sys.executable, "-m", "agent.cli", "run", "--run-dir", str(run_dir), "--duration", "600", *TINY, *ports]


def _start(run_dir: Path, log_path: Path) -> subprocess.Popen:
    return subprocess.Popen(_start_argv(run_dir), cwd=REPO, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)


def _status(run_dir: Path, name: str) -> dict:
    try:
        return json.loads((run_dir / f"status-{name}.json").read_text())
    except (OSError, ValueError):
        return {}


def _wait_for(proc: subprocess.Popen, log_path: Path, what: str, ok: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ok():
            return
        if proc.poll() is not None:
            raise AssertionError(f"run exited ({proc.returncode}) before {what}:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}:\n{log_path.read_text()[-3000:]}")


def _interrupt(proc: subprocess.Popen, log_path: Path) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"run did not stop after SIGINT:\n{log_path.read_text()[-3000:]}") from None
    assert proc.returncode == 0, log_path.read_text()[-3000:]


def _training_lines(run_dir: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [line for line in lines if "event" not in line and "loss" in line]


def _step(run_dir: Path) -> Optional[int]:
    return _status(run_dir, "trainer").get("step")


def test_run_publishes_swaps_stops_cleanly_and_resumes(tmp_path: Path) -> None:
    run_dir, log1 = tmp_path / "run", tmp_path / "run1.log"
    proc = _start(run_dir, log1)
    _wait_for(proc, log1, "the runtime's first swap", lambda: (_status(run_dir, "runtime").get("swaps") or 0) >= 1, 240)
    # The pipeline's own trainer and exporter work under run's lock; a second run (other ports) is refused.
    second = subprocess.run(_start_argv(run_dir), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and f"in use by byol-agent run (pid {proc.pid}" in second.stderr, second
    _interrupt(proc, log1)

    out = log1.read_text()
    assert "exit codes: capture=0, trainer=0, exporter=0, runtime=0" in out, out[-3000:]
    ckpt = load_latest_checkpoint(run_dir)
    assert ckpt is not None and ckpt["step"] > 0
    first_step = ckpt["step"]
    assert _status(run_dir, "exporter").get("last_export_step") == first_step, "final checkpoint was not exported"
    latest = (run_dir / "exports" / "LATEST").read_text().strip()
    manifest = json.loads((run_dir / "exports" / latest).read_text())
    assert manifest["step"] == first_step
    assert (run_dir / "exports" / manifest["model_file"]).stat().st_size > 0
    runtime = _status(run_dir, "runtime")
    assert runtime["failures"] == 0 and runtime["calls"] > 0 and runtime["version"] >= 1
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    exports = [e for e in events if e.get("event") == "export"]
    assert exports and exports[-1]["version"] == manifest["version"], "exports were not logged in metrics.jsonl"
    lines_before = _training_lines(run_dir)
    assert lines_before and all(line["loss"] is not None for line in lines_before)

    log2 = tmp_path / "run2.log"
    proc = _start(run_dir, log2)
    _wait_for(proc, log2, "training past the resumed step", lambda: (_step(run_dir) or 0) >= first_step + 5, 240)
    _interrupt(proc, log2)

    new_lines = _training_lines(run_dir)[len(lines_before) :]
    assert new_lines, "second run logged no training"
    assert min(line["step"] for line in new_lines) > first_step, "second run started over instead of resuming"
    assert load_latest_checkpoint(run_dir)["step"] >= first_step + 5
