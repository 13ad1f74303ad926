"""The run directory's records, read by name: metrics.jsonl (trainer), capture.jsonl, runtime.jsonl, config.yaml.

The lower layer of `byol-agent report` and the metrics API the CLI and publishing use: `read_metrics`
/ `read_run` parse the JSON-lines files (a torn last line, from a crash mid-write, is skipped and
counted), `append_event` appends one event line, and the helpers below derive what figures and the
summary both read (evals per version, drift per version, counters continued across restarts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from agent.core.errors import ByolAgentError, StorageError
from agent.core.jsonl import append_jsonl, read_jsonl
from trainer.metrics import METRICS_NAME
from trainer.run_lines import CaptureLine, RuntimeLine, is_number

Row = Union[dict[str, Any], CaptureLine, RuntimeLine]  # a metrics.jsonl line, or a typed line of another file

CAPTURE_HISTORY = "capture.jsonl"


RUNTIME_HISTORY = "runtime.jsonl"


class RunDirError(ByolAgentError):
    """A run directory is missing or holds no readable metrics."""


@dataclass(frozen=True)
class RunMetrics:
    """metrics.jsonl split into training lines and event lines; `bad_lines` counts unparsable ones."""

    train: list[dict[str, Any]]
    events: list[dict[str, Any]]
    bad_lines: int

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of a numeric training key; x is the step where recorded, else the line number."""
        xs, ys = [], []
        for i, row in enumerate(self.train):
            value = row.get(key)
            if is_number(value):
                step = row.get("step")
                xs.append(step if is_number(step) else i)
                ys.append(float(value))
        return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)

    def of(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]

    def times(self) -> list[float]:
        """The wall-clock "time" of every record, training and event lines alike, in file order."""
        return [float(r["time"]) for r in self.train + self.events if is_number(r.get("time"))]


def read_metrics(run_dir: Union[str, Path]) -> RunMetrics:
    """Parse RUN_DIR/metrics.jsonl, skipping (and counting) lines a crash may have left half-written."""
    rows, bad = _read_jsonl(_metrics_path(run_dir))
    train = [row for row in rows if "event" not in row]
    events = [row for row in rows if "event" in row]
    return RunMetrics(train, events, bad)


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(objects, unreadable line count) of a JSON-lines file (`agent.core.jsonl.read_jsonl`); RunDirError
    when it cannot be read."""
    try:
        read = read_jsonl(path)
    except StorageError as exc:
        raise RunDirError(str(exc)) from None
    return read.rows, read.bad_lines


def append_event(run_dir: Union[str, Path], event: dict[str, Any]) -> Path:
    """Append one event line (`agent.core.jsonl.append_jsonl`): a single write of one line, so it does not
    interleave with the trainer's.

    Raises RunDirError when the run directory is missing, StorageError when the line cannot be written.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise RunDirError(f"run directory {str(run)!r} does not exist")
    path = run / METRICS_NAME
    append_jsonl(path, event)
    return path


def _metrics_path(run_dir: Union[str, Path]) -> Path:
    run = Path(run_dir)
    if not run.is_dir():
        raise RunDirError(f"run directory {str(run)!r} does not exist")
    path = run / METRICS_NAME
    if not path.is_file():
        raise RunDirError(f"run directory {str(run)!r} holds no {METRICS_NAME} (has the trainer run there?)")
    return path


@dataclass(frozen=True)
class RunRecords:
    """Everything the report reads from one run directory (see the module docstring)."""

    run_dir: Path
    metrics: RunMetrics
    capture: list[CaptureLine]  # capture.jsonl, [] when not recorded
    runtime: list[RuntimeLine]  # runtime.jsonl, [] when not recorded
    bad_lines: dict[str, int]  # unreadable lines per file
    embedding_dim: Optional[int]  # model.projection_size from config.yaml
    probe_data: Optional[str]  # train.probe_data from config.yaml
    warn_knn_drop: float  # train.warn_knn_drop from config.yaml (its default when unreadable): "falling" below the best
    t0: float  # earliest wall-clock time of any record (s since the epoch); 0 when none has one
    t_end: float  # latest such time, in seconds since t0

    def since_start(self, rows: Sequence[Row], key: str, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """(seconds since start, value * scale) of the rows holding both a "time" and a numeric `key`: a
        metrics.jsonl dict's key, or a typed line's field (a name the line does not have raises AttributeError)."""
        values = [(_field(r, "time"), _field(r, key)) for r in rows]
        pairs = [(t - self.t0, v * scale) for t, v in values if is_number(t) and is_number(v)]
        return (np.asarray([p[0] for p in pairs], dtype=float), np.asarray([p[1] for p in pairs], dtype=float))

    @property
    def evals(self) -> list[dict[str, Any]]:
        return _eval_by_version(_versioned_evals(self.metrics))


def _field(row: Row, key: str) -> Any:
    return row.get(key) if isinstance(row, dict) else getattr(row, key)


def read_run(run_dir: Union[str, Path]) -> RunRecords:
    """Read RUN_DIR's metrics.jsonl (required), capture.jsonl, runtime.jsonl and config.yaml (optional)."""
    run = Path(run_dir)
    metrics = read_metrics(run)
    bad = {METRICS_NAME: metrics.bad_lines}
    histories = {}
    for name in (CAPTURE_HISTORY, RUNTIME_HISTORY):
        rows, bad[name] = _read_jsonl(run / name) if (run / name).is_file() else ([], 0)
        histories[name] = rows
    dim, probe_data, knn_drop = _from_config(run / "config.yaml")
    capture = [CaptureLine.parse(r) for r in histories[CAPTURE_HISTORY]]
    runtime = [RuntimeLine.parse(r) for r in histories[RUNTIME_HISTORY]]
    times = metrics.times() + [float(r.time) for r in capture if r.time is not None]
    times += [float(r.time) for r in runtime if r.time is not None]
    t0 = min(times) if times else 0.0
    span = max(times) - t0 if times else 0.0
    return RunRecords(run, metrics, capture, runtime, bad, dim, probe_data, knn_drop, t0, span)


def _from_config(path: Path) -> tuple[Optional[int], Optional[str], float]:
    """(model.projection_size, train.probe_data, train.warn_knn_drop) of the run's config.yaml; (None, None,
    the default drop) when unreadable."""
    from agent.core.config import load_config
    from agent.core.config_learning import TrainConfig

    default_drop = TrainConfig().warn_knn_drop
    if not path.is_file():
        return None, None, default_drop
    try:
        cfg = load_config(path)
    except ByolAgentError:
        return None, None, default_drop
    return cfg.model.projection_size, cfg.train.probe_data, cfg.train.warn_knn_drop


def _versioned_evals(metrics: RunMetrics) -> list[dict[str, Any]]:
    """The eval events, each with the version published from its step when an export event has that step.

    The trainer's online probe scores the state it checkpoints or exports (trainer/quality_monitor.py)
    before that state has a version number (`run`'s exporter is another process), so its events carry
    the step; `byol-agent eval` events carry the manifest's version and step, which agree with this.
    """
    by_step = {
        int(e["step"]): e["version"]
        for e in metrics.of("export")
        if is_number(e.get("step")) and isinstance(e.get("version"), int)
    }
    out = []
    for event in metrics.of("eval"):
        step = event.get("step")
        version = by_step.get(int(step)) if is_number(step) else None
        out.append({**event, "version": version} if version is not None else event)
    return out


def _eval_by_version(evals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Last eval per exported version (re-evaluations overwrite), ordered by version."""
    latest: dict[int, dict[str, Any]] = {}
    for i, event in enumerate(evals):
        if not is_number(event.get("knn_top1")):
            continue
        version = event.get("version")
        latest[version if isinstance(version, int) else -1 - i] = event
    return [latest[v] for v in sorted(latest)]


def drift_events(metrics: RunMetrics) -> list[dict[str, Any]]:
    """Export events that carry drift figures (export.drift_gate.drift_record), ordered by version."""
    events = [e for e in metrics.of("export") if isinstance(e.get("version"), int) and is_number(e.get("cka_prev"))]
    return sorted(events, key=lambda e: e["version"])


def pinned_cka(event: dict[str, Any]) -> dict[int, float]:
    """{pinned version: CKA} of an export event's "cka_pinned" (malformed entries skipped)."""
    pinned = event.get("cka_pinned")
    if not isinstance(pinned, dict):
        return {}
    return {int(k): float(v) for k, v in pinned.items() if str(k).isdigit() and is_number(v)}


def continued(values: list[float]) -> np.ndarray:
    """A cumulative counter continued across restarts of the process that counts it (a resumed run, a
    restarted child): where it falls, a new process started from 0, so what the previous one had counted is
    added from there on. (Each process writes a first record of zeros, so every restart shows as a fall.)"""
    out, offset, previous = [], 0.0, None
    for value in values:
        if previous is not None and value < previous:
            offset += previous
        out.append(value + offset)
        previous = value
    return np.asarray(out, dtype=float)


def continued_counts(run: RunRecords, rows: Sequence[Row], key: str) -> tuple[np.ndarray, np.ndarray]:
    """`RunRecords.since_start` of a cumulative counter, continued across restarts (`continued`)."""
    t, y = run.since_start(rows, key)
    return t, continued(list(y))


def runtime_calls(run: RunRecords) -> Optional[int]:
    """Calls the runtime made over the whole run (continued across restarts); None when not recorded."""
    _, calls = continued_counts(run, run.runtime, "calls")
    return int(calls[-1]) if len(calls) else None


def exported_versions(metrics: RunMetrics, *, by: str, t0: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(step or seconds since start, version) of each "export" event, in the order of `by`."""
    pairs = sorted(
        (float(e[by]) - t0, float(e["version"]))
        for e in metrics.of("export")
        if is_number(e.get(by)) and is_number(e.get("version"))
    )
    return np.asarray([p[0] for p in pairs], dtype=float), np.asarray([p[1] for p in pairs], dtype=float)


def last_value(metrics: RunMetrics, key: str) -> Any:
    """The value of `key` in the last training line or stop event holding it (counters are cumulative)."""
    rows = [r for r in metrics.train + metrics.of("stop") if key in r and r[key] is not None]
    rows.sort(key=lambda r: r["time"] if is_number(r.get("time")) else -math.inf)
    return rows[-1][key] if rows else None


def step_range(metrics: RunMetrics) -> Optional[tuple[int, int]]:
    """(first, final) step: first from the first start event (else the first training line); final the
    highest step of a training line or stop event (the stop event holds the step reached after the
    last metrics window, which a training line recorded only every `train.metrics_every` steps misses)."""
    starts = [e["step"] for e in metrics.of("start") if is_number(e.get("step"))]
    steps, _ = metrics.series("step")
    reached = [float(s) for s in steps] + [float(e["step"]) for e in metrics.of("stop") if is_number(e.get("step"))]
    if not reached:
        return None
    return int(starts[0] if starts else min(reached)), int(max(reached))


CAPTURE_COUNTS = (
    ("frames_read", "read"),
    ("kept", "kept"),
    ("skipped_novelty", "novelty skipped"),
    ("superseded", "over fps cap"),
    ("sent", "sent"),
    ("dropped", "dropped"),
)
