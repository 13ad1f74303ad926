"""The `jsonl` metrics sink: RUN_DIR/metrics.jsonl, one JSON object per line, the run's record.

Written through `agent.core.jsonl.JsonlAppender` (flushed per line, so a kill -9 loses at most the
line being written; a torn last line is ended before the next record; non-finite floats as null);
read back by `trainer.run_records.read_metrics` (`byol-agent report`), which skips a torn line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.core.jsonl import JsonlAppender
from trainer.sinks import MetricsSink

METRICS_NAME = "metrics.jsonl"


class JsonlSink(MetricsSink):
    """Appends each record to RUN_DIR/metrics.jsonl; StorageError when a line cannot be written."""

    target = METRICS_NAME

    def __init__(self, run_dir: Path, start_step: int = 0) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / self.target
        self._appender = JsonlAppender(self.path)

    def write(self, record: dict[str, Any]) -> None:
        self._appender.append(record)

    def close(self) -> None:
        self._appender.close()
