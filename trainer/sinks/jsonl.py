"""The `jsonl` metrics sink: RUN_DIR/metrics.jsonl, one JSON object per line, the run's record.

Flushed per line, so a kill -9 loses at most the line being written; read back by
`trainer.report.read_metrics` (`byol-agent report`), which skips a torn line. Non-finite floats
are written as null (`agent.core.atomic.jsonable`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, TextIO

from agent.core.atomic import jsonable
from trainer.sinks import MetricsSink, close_quietly

METRICS_NAME = "metrics.jsonl"


class JsonlSink(MetricsSink):
    """Appends each record to RUN_DIR/metrics.jsonl; OSError when a line cannot be written."""

    target = METRICS_NAME

    def __init__(self, run_dir: Path, start_step: int = 0) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / self.target
        self._file: Optional[TextIO] = open(self.path, "a", encoding="utf-8")
        self._torn = _ends_torn(self.path)  # a line cut off by a full disk: the next record starts a new one

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            raise ValueError(f"{METRICS_NAME} sink is closed")
        self._file.write(("\n" if self._torn else "") + json.dumps(jsonable(record)) + "\n")
        self._file.flush()
        self._torn = False

    def close(self) -> None:
        file, self._file = self._file, None
        close_quietly(file)


def _ends_torn(path: Path) -> bool:
    """Whether the file's last line lacks its newline (a write cut short); False for an empty file."""
    with open(path, "rb") as fh:
        if fh.seek(0, 2) == 0:
            return False
        fh.seek(-1, 2)
        return fh.read(1) != b"\n"
