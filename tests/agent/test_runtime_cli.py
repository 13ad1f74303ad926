"""`byol-agent runtime` as a real subprocess: serves the demo source, swaps live, writes its status."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.agent.test_runtime import wait_until
from tests.conftest import REPO
from tests.export.tiny import publish_version

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def _runtime(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "runtime", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen, timeout_s: float = 90.0) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _status(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def test_policy_loop_keeps_serving_across_a_swap(tmp_path: Path) -> None:
    exports = tmp_path / "exports"
    publish_version(exports, seed=1)
    status_path = tmp_path / "status-runtime.json"
    proc = _runtime(
        "--export-dir",
        str(exports),
        "--source",
        "demo",
        "--status-dir",
        str(tmp_path),
        "--duration",
        "120",
        "runtime.poll_interval_s=0.1",
        "capture.height=40",
        "capture.width=40",
    )
    try:
        wait_until(lambda: _status(status_path).get("calls", 0) > 0 or proc.poll() is not None, 60)
        publish_version(exports, seed=2)
        wait_until(lambda: _status(status_path).get("version") == 2 or proc.poll() is not None, 60)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    final = _status(status_path)
    assert final["version"] == 2 and final["swaps"] == 1
    assert (final["first_served_version"], final["last_served_version"], final["served_swaps"]) == (1, 2, 1)
    assert final["failures"] == 0 and final["calls"] > 0 and final["p99_ms"] >= final["p50_ms"] > 0
    lines = [line for line in out.splitlines() if line.startswith("t=")]
    assert lines and "version 2" in lines[-1] and "swaps 1" in lines[-1]


def test_no_wait_without_an_export_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = _runtime("--export-dir", str(tmp_path / "empty"), "--source", "demo", "--no-wait")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.strip().count("\n") == 0 and "no servable encoder" in err and "Traceback" not in err


def test_a_missing_export_dir_is_an_error_not_a_wait(tmp_path: Path) -> None:
    """A mistyped --export-dir used to wait for a first encoder forever, --duration or not."""
    proc = _runtime("--export-dir", str(tmp_path / "exprots"), "--source", "demo", "--duration", "600")
    out, err = _finish(proc)
    assert proc.returncode == 2, (out, err)
    assert err.strip().count("\n") == 0 and "exprots does not exist" in err and "Traceback" not in err


def test_duration_bounds_the_wait_for_a_first_encoder(tmp_path: Path) -> None:
    """An existing, still empty export dir is waited for, but no longer than --duration."""
    (tmp_path / "exports").mkdir()
    start = time.monotonic()
    proc = _runtime("--export-dir", str(tmp_path / "exports"), "--source", "demo", "--duration", "3")
    out, err = _finish(proc)
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, (out, err)
    assert "waiting for the first encoder" in out and "no encoder was published" in err, (out, err)
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert elapsed >= 3.0


def test_the_run_line_counts_swaps_between_calls_and_names_a_version_loaded_after_the_last_call() -> None:
    """The reviewer's run: v4 and v5 were loaded after capture stopped; the line said "on v5 after 4 swap(s)"
    while summary.md counted 3 swaps and v5 had served nothing."""
    from agent.commands.run import served

    status = {
        "exporter": {"exports": 5, "last_export_version": 5},
        "runtime": {
            "version": 5,
            "swaps": 4,
            "calls": 1995,
            "failures": 0,
            "first_served_version": 1,
            "last_served_version": 3,
            "served_swaps": 2,
        },
    }
    assert served(status) == (
        "published 5 version(s) this session (latest v5); the runtime served 1995 call(s) on "
        "v1 to v3 (2 swap(s) between calls), 0 failed; v5 was loaded after the last call "
        "(no call ran on it)"
    )
    status["runtime"].update(version=3, first_served_version=3, served_swaps=0)
    assert served(status).endswith("served 1995 call(s) on v3 (0 swap(s) between calls), 0 failed")
    status["runtime"].update(first_served_version=None, last_served_version=None, calls=0)
    assert served(status).endswith("the runtime served no call, 0 failed")
