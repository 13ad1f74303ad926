"""Supervisor: a pipeline that fails to start leaves no child running."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from agent.supervisor import ChildSpec, Supervisor, supervise


class _NeverStop:
    """Stands in for StopFlag without installing signal handlers in the test process."""

    def wait(self, timeout_s: float) -> bool:
        return False


@pytest.mark.slow
def test_a_child_that_cannot_be_spawned_stops_the_ones_already_started(tmp_path: Path) -> None:
    sleeper = ChildSpec("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], 10.0)
    missing = ChildSpec("missing", [str(tmp_path / "no-such-program")], 10.0)
    sup = Supervisor([sleeper, missing], tmp_path / "logs", max_restarts=0)
    with pytest.raises(FileNotFoundError):
        supervise(sup, tmp_path, duration_s=None, status_every_s=60.0, stop=_NeverStop(), out=io.StringIO())
    proc = sup._children[0].proc
    assert proc is not None and proc.poll() is not None


@pytest.mark.slow
def test_a_failing_child_is_restarted_with_backoff_not_in_a_burst(tmp_path: Path) -> None:
    """A fault that lasts (a full disk) once used up 3 restarts in ~11 s and ended the run for good."""
    import time

    marker = tmp_path / "fixed"
    # Fails at once until `marker` exists (the fault clears), then runs like a healthy child.
    script = f"import os, sys, time\nif not os.path.exists({str(marker)!r}): sys.exit(3)\ntime.sleep(60)"
    flaky = ChildSpec("flaky", [sys.executable, "-c", script], 5.0)
    sup = Supervisor([flaky], tmp_path / "logs", max_restarts=3, backoff_max_s=4.0)
    reports: list[str] = []
    started = time.monotonic()
    sup.start()
    try:
        deadline = started + 6.0
        while time.monotonic() < deadline:
            assert sup.check(reports.append), reports
            time.sleep(0.05)
        assert sup.restarts["flaky"] == 3  # after 1 s and 2 s back-offs the third restart waits 4 s
        assert [r.split(" in ")[-1] for r in reports] == ["1 s", "2 s", "4 s"], reports
        marker.touch()  # the fault clears before the third restart: the run recovers
        while time.monotonic() < started + 9.0:
            assert sup.check(reports.append), reports
            time.sleep(0.05)
        assert sup._children[0].proc is not None and sup._children[0].proc.poll() is None
    finally:
        sup.stop()


def test_stopping_says_which_child_it_waits_for_and_when_each_has_stopped(tmp_path: Path) -> None:
    """A trainer's final checkpoint, export and probe took ~140 s at load with nothing on the console."""
    import time

    ready = tmp_path / "ready"
    # Takes ~1.5 s to stop after SIGINT, as a trainer finishing its last checkpoint does (SIGINT unblocked as
    # agent.cli.main does).
    script = (
        f"import pathlib, signal, sys, time\nsignal.signal(signal.SIGINT, lambda *a: (time.sleep(1.5), sys.exit(0)))"
        f"\nsignal.pthread_sigmask(signal.SIG_UNBLOCK, {{signal.SIGINT}})"
        f"\npathlib.Path({str(ready)!r}).touch()\nwhile True: time.sleep(0.1)"
    )
    slow = ChildSpec("trainer", [sys.executable, "-c", script], 60.0)
    sup = Supervisor([slow], tmp_path / "logs", max_restarts=0)
    sup.start()
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    lines: list[str] = []
    assert sup.stop(lines.append, every_s=0.3) == {"trainer": 0}
    assert any(line.startswith("  waiting for trainer to stop (") for line in lines), lines
    assert lines[-1].startswith("  trainer stopped after ") and lines[-1].endswith(" s (exit 0)"), lines


def test_a_status_line_fits_the_terminal_and_keeps_its_end_in_view() -> None:
    # a new user's 200-column tmux showed `... export v1 (refu`: the runtime's swaps never in view (found in review)
    from agent.supervisor import fit_line

    line = "t=  90s | " + "x" * 300 + " | runtime v5 swaps 4 calls 1995"
    fitted = fit_line(line, 80)
    assert len(fitted) == 79 and fitted.endswith("runtime v5 swaps 4 calls 1995") and fitted.startswith("t=  90s")
    assert fit_line("short", 80) == "short"


def test_a_narrow_terminal_keeps_step_loss_knn_export_and_runtime() -> None:
    """The fresh-clone reviewer's last status line at 80 columns read "t=  312s | frames read 4495 kept 4473 (…8 prev)
    | runtime v6 swaps 5 calls 2985": step, loss, kNN and the export were cut out of the middle."""
    from agent.supervisor import fit_line

    line = (
        "t=  312s | frames read 4495 kept 4473 (novelty skipped 1) | sent 4473 dropped 141 | in 4332 | buffer 4096 "
        "(100%) | step 957 (5.12/s) | loss 1.261 | emb std 0.052 | kNN 0.76 (init 0.72) | export v6 (refused 0, CKA "
        "0.998 prev) | runtime v6 swaps 5 calls 2985"
    )
    fitted = fit_line(line, 140)
    assert fitted == (
        "t=  312s | step 957 (5.12/s) | loss 1.261 | kNN 0.76 (init 0.72) | export v6 (refused 0, CKA 0.998 prev) | "
        "runtime v6 swaps 5 calls 2985"
    )
    narrow = fit_line(line, 80)
    assert len(narrow) == 79 and narrow.startswith("t=  312s | step 957") and narrow.endswith("calls 2985"), narrow


def test_the_status_line_names_frames_over_the_fps_cap_only_when_there_are_some() -> None:
    from agent.supervisor import format_pipeline_status

    capture = {"frames_read": 600, "kept": 100, "skipped_novelty": 1, "superseded": 499}
    line = format_pipeline_status({"capture": capture}, elapsed_s=9.0, restarts={})
    assert "frames read 600 kept 100 (novelty skipped 1, over fps cap 499)" in line
    line = format_pipeline_status({"capture": {**capture, "superseded": 0}}, elapsed_s=9.0, restarts={})
    assert "frames read 600 kept 100 (novelty skipped 1) |" in line
