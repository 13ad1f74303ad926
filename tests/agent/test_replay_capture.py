"""Replay's capture child runs under the one process supervisor: its end and its failure are seen."""

from __future__ import annotations

from pathlib import Path

from agent.replay import ReplayCapture


def test_a_capture_that_fails_sets_done_and_gives_a_one_line_reason(tmp_path: Path) -> None:
    capture = ReplayCapture(tmp_path / "missing.yaml", "asap", tmp_path / "logs")
    capture.start("tcp://127.0.0.1:9")
    try:
        assert capture.done.wait(60)
    finally:
        capture.stop()
    assert capture.failure is not None and "replay-capture exited with code 2" in capture.failure
    assert "missing.yaml" in capture.failure and "\n" not in capture.failure
    assert (tmp_path / "logs" / "replay-capture.log").exists()


def test_stop_before_start_does_nothing(tmp_path: Path) -> None:
    ReplayCapture(tmp_path / "c.yaml", "realtime", tmp_path / "logs").stop()
