"""`byol-agent run` with a source that is not there: a file fails at once, a camera is waited for.

A missing video file made `run` restart capture 3 times (36 s) and exit 1, leaving a
half-made run directory. A camera that is not up yet used up capture's restart budget
within seconds and stopped the run. Real `run` processes, and `run`'s supervisor with a real capture child;
the camera is a device that does not exist.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.commands.run import child_specs
from agent.core.config import dump_config, load_config
from agent.supervisor import Supervisor, supervise
from tests.conftest import REPO, free_tcp_endpoint

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "agent.cli", "run"]


def _ports() -> list[str]:
    return [f"wire.endpoint={free_tcp_endpoint()}", f"wire.publish={free_tcp_endpoint()}"]


@pytest.fixture(scope="module")
def bad_file_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`run` on each kind of bad file, started together; a run that starts its children instead is
    killed after 25 s (it used to take 36 s to give up)."""
    root = tmp_path_factory.mktemp("bad-files")
    corrupt = root / "corrupt.mp4"
    corrupt.write_bytes(os.urandom(20000))
    cases = {
        "missing": (str(root / "missing.mp4"), "does not exist"),
        "corrupt": (str(corrupt), "cannot be decoded"),
        "empty glob": (str(root / "frames" / "*.png"), "matches no files"),
    }
    procs = {
        name: subprocess.Popen(
            [*CLI, "--source", source, "--run-dir", str(root / f"run-{i}"), *_ports()],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, (name, (source, _)) in enumerate(cases.items())
    }
    results = {}
    try:
        for i, (name, proc) in enumerate(procs.items()):
            try:
                out, err = proc.communicate(timeout=25)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
                err += "\n(killed after 25 s)"
            results[name] = (proc.returncode, out, err, root / f"run-{i}", cases[name][1])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


@pytest.mark.parametrize("case", ["missing", "corrupt", "empty glob"])
def test_a_bad_file_source_is_a_one_line_error_before_anything_starts(bad_file_runs: dict, case: str) -> None:
    code, out, err, run_dir, needle = bad_file_runs[case]
    assert code == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("byol-agent run: error: ") and needle in lines[0], err[-2000:]
    assert not run_dir.exists()  # no half-made run directory


class _NeverStop:
    """Stands in for StopFlag without installing signal handlers in the test process."""

    def wait(self, timeout_s: float) -> bool:
        time.sleep(timeout_s)
        return False


def test_a_camera_absent_at_start_is_waited_for_without_using_up_restarts(tmp_path: Path) -> None:
    """`run`'s supervisor with `run`'s capture child (the trainer, exporter and runtime left out to keep
    it fast) and no restarts allowed: a capture that exits for a missing camera ends the run at once."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = load_config(None, [*_ports(), "run.max_restarts=0"], {"capture.sources": ["/dev/video99"]})
    dump_config(cfg, run_dir / "config.yaml")
    capture = [spec for spec in child_specs(cfg, run_dir, run_dir / "config.yaml") if spec.name == "capture"]
    sup = Supervisor(capture, run_dir / "logs", max_restarts=cfg.run.max_restarts)
    out = io.StringIO()
    code = supervise(sup, run_dir, duration_s=6.0, status_every_s=0.5, stop=_NeverStop(), out=out)
    text = out.getvalue()
    assert code == 0 and "capture exited" not in text and "restarts capture" not in text, text
    assert "exit codes: capture=0" in text, text  # it was running until told to stop
    status_lines = [line for line in text.splitlines() if line.startswith("t=")]
    assert any("| waiting for camera /dev/video99 |" in line for line in status_lines), text
    capture_log = (run_dir / "logs" / "capture.log").read_text()
    assert "camera /dev/video99 is not there" in capture_log and "still waiting" in capture_log, capture_log[-2000:]


def test_run_refuses_a_fleet_config_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`run` starts one trainer; a capture it started would also push to ranks nobody runs."""
    from agent.cli import main as cli_main

    run_dir = tmp_path / "run"
    assert (
        cli_main(["run", "--run-dir", str(run_dir), "wire.endpoints=[tcp://127.0.0.1:5555, tcp://127.0.0.1:5556]"]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("byol-agent run: error: wire.endpoints lists 2 trainer ranks") and "\n" not in err
    assert not run_dir.exists()
