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
from trainer.sinks import MetricsSink

METRICS_NAME = "metrics.jsonl"


class JsonlSink(MetricsSink):
    """Appends each record to RUN_DIR/metrics.jsonl; OSError when a line cannot be written."""

    def __init__(self, run_dir: Path, start_step: int = 0) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / METRICS_NAME
        self._file: Optional[TextIO] = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            raise ValueError(f"{METRICS_NAME} sink is closed")
        self._file.write(json.dumps(jsonable(record)) + "\n")
        self._file.flush()

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except OSError:  # the buffered tail could not be flushed (disk full): already counted as lost
                pass
