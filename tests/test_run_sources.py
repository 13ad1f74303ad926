"""`byol-agent run` with a source that is not there: a file fails at once.

Issue 13 item 6: a missing video file made `run` restart capture 3 times (36 s) and exit 1, leaving a
half-made run directory. Real `run` processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, free_tcp_endpoint

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
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
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
