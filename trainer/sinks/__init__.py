"""Metrics sinks: where the trainer's records go. A new kind is one file here plus one line in `SINKS`.

A sink receives what `trainer.metrics.MetricsWriter` fans out: records (dicts with a wall-clock
"time" and usually a "step": a training window `{"step", "loss", "lr", ...}` or an event
`{"event": "start" | "eval" | "export" | "stop" | ..., ...}`, see trainer/run_monitor.py) and, for
sinks that show pictures, image grids. A sink raises when it cannot write (OSError or StorageError
for a full or unwritable disk, ImportError when its package is missing); `MetricsWriter` counts and
logs that and reopens it later, so no sink can stop training. Each kind is imported only when configured
(`metrics.sinks`), so a sink's package loads only where it is used. The contract every registered
sink meets is one parametrized test (tests/trainer/test_sinks.py).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from agent.core.errors import ConfigError

SINKS: dict[str, str] = {
    "jsonl": "trainer.sinks.jsonl:JsonlSink",
    "tensorboard": "trainer.sinks.tensorboard:TensorBoardSink",
}


class MetricsSink(ABC):
    """One destination of metric records; see the module docstring.

    `run_dir`: the run directory (created if missing); `start_step`: the step this process starts
    from (> 0 for a resumed run, whose sink may drop what an earlier process logged beyond it).
    """

    target: ClassVar[str]  # the file or folder it writes in the run directory
    shows_images: ClassVar[bool] = False

    @abstractmethod
    def __init__(self, run_dir: Path, start_step: int = 0) -> None: ...

    @abstractmethod
    def write(self, record: dict[str, Any]) -> None:
        """Write one record; raise (OSError, StorageError, ...) when it cannot be written."""

    def image(self, tag: str, step: int, image: np.ndarray) -> None:  # noqa: B027 - optional: a no-op by default
        """Show an (H, W, 3) uint8 RGB image under `tag` at `step`; sinks without pictures ignore it."""

    @abstractmethod
    def close(self) -> None:
        """Flush and release; safe to call twice and on a full disk (never raises)."""


def close_quietly(file: Any) -> None:
    """Close a sink's file; a buffered tail that cannot be flushed (disk full) is already counted as lost."""
    if file is not None:
        try:
            file.close()
        except OSError:
            pass


def sink_names() -> list[str]:
    """The registered kinds, for `metrics.sinks`."""
    return sorted(SINKS)


def check_sink_names(names: Sequence[str]) -> None:
    """ConfigError (one line naming the key and the registered kinds) for a name that is not registered."""
    unknown = [name for name in names if name not in SINKS]
    if unknown:
        raise ConfigError(
            f"bad config value for 'metrics.sinks': unknown sink {unknown[0]!r}; registered: {', '.join(sink_names())}"
        )


def sink_class(name: str) -> type[MetricsSink]:
    """The class registered as `name` (imported now); ConfigError for an unknown name, ImportError
    when the sink's own package is missing."""
    check_sink_names([name])
    module, _, attr = SINKS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def open_sink(name: str, run_dir: Path, start_step: int = 0) -> MetricsSink:
    """An open sink of kind `name` writing into `run_dir`; raises what its constructor raises."""
    return sink_class(name)(Path(run_dir), start_step)
