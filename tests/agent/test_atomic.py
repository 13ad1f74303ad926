"""Atomic files: leftovers of killed writers are removed at the next start; status writes never stop a process."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.core.atomic import append_record, atomic_write_bytes, remove_stale_temps, temp_name, write_status


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temps_of_dead_writers_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    dead = tmp_path / f".tmp-{_dead_pid()}-abcd1234-ckpt-000000020.pt"
    live = tmp_path / temp_name("status-trainer.json")  # ours: this process is alive
    unowned_old, unowned_new = tmp_path / ".tmp-status.json-1a2b3c4d", tmp_path / ".tmp-fresh"
    keep = tmp_path / "ckpt-000000010.pt"
    for path in (dead, live, unowned_old, unowned_new, keep):
        path.write_bytes(b"x")
    os.utime(unowned_old, (0, 0))
    assert sorted(p.name for p in remove_stale_temps(tmp_path)) == sorted([dead.name, unowned_old.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, unowned_new.name, keep.name])
    assert remove_stale_temps(tmp_path / "missing") == []


def test_status_write_failure_is_a_warning_not_an_exception(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "gone" / "status-capture.json"
    with caplog.at_level(logging.WARNING, logger="agent.core.atomic"):
        for _ in range(3):
            assert write_status(missing, {"sent": 1}) is False
    assert caplog.text.count("not written") == 1  # the first failure, not every second
    assert write_status(tmp_path / "status-capture.json", {"sent": 2}) is True
    atomic_write_bytes(tmp_path / "x.json", b"{}")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_history_append_failure_is_a_warning_and_lines_stay_whole(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "gone" / "runtime.jsonl"
    with caplog.at_level(logging.WARNING, logger="agent.core.atomic"):
        for _ in range(3):
            assert append_record(missing, {"version": 1}) is False
    assert caplog.text.count("not appended") == 1
    path = tmp_path / "runtime.jsonl"
    assert append_record(path, {"version": 1, "p50_ms": float("nan")}) and append_record(path, {"version": 2})
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"version": 1, "p50_ms": None},
        {"version": 2},
    ]
