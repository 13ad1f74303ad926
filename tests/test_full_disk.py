"""A full disk under `byol-agent run`: nothing dies for good, the runtime keeps serving, and the run
recovers by itself when space returns (real processes; the disk is a tmpfs filled with ballast, or a
file-size limit where mounting is not allowed: see tests/disk.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, free_tcp_endpoint
from tests.disk import FillableDisk
from tests.test_end_to_end import TINY, _status, _wait_for

pytestmark = pytest.mark.slow

FULL_S = 20.0  # longer than it took every process to die before (trainer ~10 s, exporter ~5 s, 3 restarts ~11 s)


@pytest.fixture
def disk(tmp_path: Path):
    fillable = FillableDisk(tmp_path / "mnt")
    yield fillable
    fillable.free()
    fillable.close()


def test_run_survives_a_full_disk_and_recovers_when_space_returns(disk: FillableDisk, tmp_path: Path) -> None:
    run_dir, log_path = disk.path / "run", tmp_path / "run.log"  # the supervisor's own output stays off the disk
    ports = [f"wire.endpoint={free_tcp_endpoint()}", f"wire.publish={free_tcp_endpoint()}"]
    argv = [sys.executable, "-m", "agent.cli", "run", "--run-dir", str(run_dir), "--duration", "600", *TINY, *ports]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    try:
        _wait_for(proc, log_path, "a first swap", lambda: (_status(run_dir, "runtime").get("swaps") or 0) >= 1, 240)
        before = {name: _status(run_dir, name) for name in ("trainer", "exporter", "runtime")}

        disk.fill(proc.pid)
        time.sleep(FULL_S)
        assert proc.poll() is None, f"run exited on a full disk:\n{log_path.read_text()[-3000:]}"
        full_log = log_path.read_text()
        disk.free(proc.pid)

        step0, version0 = before["trainer"]["step"], before["exporter"]["last_export_version"]
        _wait_for(
            proc,
            log_path,
            "training to go on after space returned",
            lambda: (_status(run_dir, "trainer").get("step") or 0) > step0 + 30,
            180,
        )
        _wait_for(
            proc,
            log_path,
            "a new export after space returned",
            lambda: (_status(run_dir, "exporter").get("last_export_version") or 0) > version0,
            180,
        )
        _wait_for(
            proc,
            log_path,
            "the runtime to swap to it",
            lambda: (_status(run_dir, "runtime").get("version") or 0) > version0,
            120,
        )
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=240) == 0, log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = log_path.read_text()
    assert "used up its" not in log, log[-3000:]
    assert "restart" not in full_log, f"a process died on the full disk ({disk.kind}):\n{full_log[-3000:]}"
    leftovers = [p.name for p in run_dir.rglob(".tmp-*")] + [p.name for p in run_dir.rglob("*.tmp-*")]
    assert not leftovers, leftovers
    for name in ("trainer", "exporter", "capture", "runtime"):
        child_log = (run_dir / "logs" / f"{name}.log").read_text(errors="replace")
        assert "Traceback" not in child_log, f"{name}:\n{child_log[-3000:]}"
