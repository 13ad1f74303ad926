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


def test_a_child_that_cannot_be_spawned_stops_the_ones_already_started(tmp_path: Path) -> None:
    sleeper = ChildSpec("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], 10.0)
    missing = ChildSpec("missing", [str(tmp_path / "no-such-program")], 10.0)
    sup = Supervisor([sleeper, missing], tmp_path / "logs", max_restarts=0)
    with pytest.raises(FileNotFoundError):
        supervise(sup, tmp_path, duration_s=None, status_every_s=60.0, stop=_NeverStop(), out=io.StringIO())
    proc = sup._children[0].proc
    assert proc is not None and proc.poll() is not None
