"""`byol-agent report`: one page on a run directory — is it learning, is data flowing, is the robot served.

Reads what the pipeline appends to the run directory:
- metrics.jsonl (trainer, `trainer/run_monitor.py`): a training line every `train.metrics_every`
  steps (step, loss, embedding_std, img_per_s, frames_in, frames_dropped, buffer_fill as a
  fraction 0..1, frames_per_camera, ...) and event lines ("start", "stop" with the final step and
  counters, "export", "export_refused", "restore", "eval" with knn_top1 / random_knn_top1 per version);
- capture.jsonl (capture, `agent/robot/capture.py`): cumulative frames read / kept / novelty
  skipped / sent / dropped, and frames read per source, every 10 s and at the end;
- runtime.jsonl (runtime consumer, `agent/robot/policy_loop.py`): "serve" / "swap" records and
  every 10 s the latency percentiles (ms) of the calls since the previous record;
- config.yaml: `model.projection_size` d for the embedding-std references.
Every record carries a wall-clock "time"; the overview's x axis is seconds since the earliest one.

Writes RUN_DIR/report/: summary.md, overview.png (the three questions, on a wall clock) and the
detailed PNGs (per step). Runs differ in what they record, so the report draws what exists and
names what is missing instead of failing; a torn last line (a crash mid-write) is skipped and
counted. Exported versions are drawn as one step function of the version number, so hundreds of
them stay readable. Figures use matplotlib's object API (no pyplot, no global backend state),
imported only when a report is drawn.
"""

from __future__ import annotations

import json
import math
import shlex
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np

from agent.core.errors import ByolAgentError, StorageError
from trainer.metrics import METRICS_NAME

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

CAPTURE_HISTORY = "capture.jsonl"
RUNTIME_HISTORY = "runtime.jsonl"
TIME_LABEL = "seconds since start"
MAX_SERIES = 6  # per-camera / per-source lines drawn at most (the rest are summed in the summary)


class RunDirError(ByolAgentError):
    """A run directory is missing or holds no readable metrics."""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
            if _number(value):
                step = row.get("step")
                xs.append(step if _number(step) else i)
                ys.append(float(value))
        return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)

    def of(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]

    def times(self) -> list[float]:
        """The wall-clock "time" of every record, training and event lines alike, in file order."""
        return [float(r["time"]) for r in self.train + self.events if _number(r.get("time"))]


@dataclass(frozen=True)
class Report:
    plots: list[Path]
    summary: Path
    missing: list[str]


def read_metrics(run_dir: Union[str, Path]) -> RunMetrics:
    """Parse RUN_DIR/metrics.jsonl, skipping (and counting) lines a crash may have left half-written."""
    rows, bad = _read_jsonl(_metrics_path(run_dir))
    train = [row for row in rows if "event" not in row]
    events = [row for row in rows if "event" in row]
    return RunMetrics(train, events, bad)


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(objects, unreadable line count) of a JSON-lines file; RunDirError when it cannot be read."""
    rows: list[dict[str, Any]] = []
    bad = 0
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    bad += 1
                    continue
                if isinstance(row, dict):
                    rows.append(row)
                else:
                    bad += 1
    except OSError as exc:
        raise RunDirError(f"cannot read {path}: {exc.strerror or exc}") from None
    return rows, bad


def append_event(run_dir: Union[str, Path], event: dict[str, Any]) -> Path:
    """Append one event line; a single write of one line, so it does not interleave with the trainer's.

    Raises RunDirError when the run directory is missing, StorageError when the line cannot be written.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise RunDirError(f"run directory {str(run)!r} does not exist")
    path = run / METRICS_NAME
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(event) + "\n")
    except OSError as exc:
        raise StorageError(f"cannot append to {path}: {exc.strerror or exc}") from None
    return path


def _metrics_path(run_dir: Union[str, Path]) -> Path:
    run = Path(run_dir)
    if not run.is_dir():
        raise RunDirError(f"run directory {str(run)!r} does not exist")
    path = run / METRICS_NAME
    if not path.is_file():
        raise RunDirError(f"run directory {str(run)!r} holds no {METRICS_NAME} (has the trainer run there?)")
    return path


# --------------------------------------------------------------------------- the run's records


@dataclass(frozen=True)
class RunRecords:
    """Everything the report reads from one run directory (see the module docstring)."""

    run_dir: Path
    metrics: RunMetrics
    capture: list[dict[str, Any]]  # capture.jsonl, [] when not recorded
    runtime: list[dict[str, Any]]  # runtime.jsonl, [] when not recorded
    bad_lines: dict[str, int]  # unreadable lines per file
    embedding_dim: Optional[int]  # model.projection_size from config.yaml
    probe_data: Optional[str]  # train.probe_data from config.yaml
    t0: float  # earliest wall-clock time of any record (s since the epoch); 0 when none has one
    t_end: float  # latest such time, in seconds since t0

    def since_start(self, rows: list[dict[str, Any]], key: str, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """(seconds since start, value * scale) of the rows holding both a "time" and a numeric `key`."""
        pairs = [(r["time"] - self.t0, r[key] * scale) for r in rows if _number(r.get("time")) and _number(r.get(key))]
        return (np.asarray([p[0] for p in pairs], dtype=float), np.asarray([p[1] for p in pairs], dtype=float))

    @property
    def evals(self) -> list[dict[str, Any]]:
        return _eval_by_version(_versioned_evals(self.metrics))


def read_run(run_dir: Union[str, Path]) -> RunRecords:
    """Read RUN_DIR's metrics.jsonl (required), capture.jsonl, runtime.jsonl and config.yaml (optional)."""
    run = Path(run_dir)
    metrics = read_metrics(run)
    bad = {METRICS_NAME: metrics.bad_lines}
    histories = {}
    for name in (CAPTURE_HISTORY, RUNTIME_HISTORY):
        rows, bad[name] = _read_jsonl(run / name) if (run / name).is_file() else ([], 0)
        histories[name] = rows
    dim, probe_data = _from_config(run / "config.yaml")
    times = metrics.times() + [r["time"] for rows in histories.values() for r in rows if _number(r.get("time"))]
    t0 = min(times) if times else 0.0
    return RunRecords(run, metrics, histories[CAPTURE_HISTORY], histories[RUNTIME_HISTORY], bad, dim, probe_data,
                      t0, max(times) - t0 if times else 0.0)


def _from_config(path: Path) -> tuple[Optional[int], Optional[str]]:
    """(model.projection_size, train.probe_data) of the run's config.yaml; (None, None) when unreadable."""
    if not path.is_file():
        return None, None
    from agent.core.config import load_config

    try:
        cfg = load_config(path)
    except ByolAgentError:
        return None, None
    return cfg.model.projection_size, cfg.train.probe_data


# --------------------------------------------------------------------------- figures

LOSS_RECORD = "mean over train.metrics_every steps"
_LINE_PLOTS = (
    # file stem, training key, title, y label, scale, what one metrics line's value is
    ("loss", "loss", "BYOL loss", "loss (2 - 2 cos, both views)", 1.0, LOSS_RECORD),
    ("embedding_std", "embedding_std", "Embedding std (collapse monitor)", "std of l2-normalised embedding", 1.0,
     "last batch of each record"),
    ("throughput", "img_per_s", "Training throughput", "images / s", 1.0, "over train.metrics_every steps"),
    ("buffer_fill", "buffer_fill", "Replay buffer fill", "buffer fill (% of buffer.capacity_frames)", 100.0,
     "at each record"),
)


def report_figures(run_dir: Union[str, Path]) -> tuple[dict[str, "Figure"], list[str]]:
    """The report's figures by file stem ("overview" first), and the series that were not recorded."""
    return _figures(read_run(run_dir))


def _figures(run: RunRecords) -> tuple[dict[str, "Figure"], list[str]]:
    metrics = run.metrics
    figures: dict[str, "Figure"] = {"overview": _overview_figure(run)}
    missing: list[str] = []
    for stem, key, title, ylabel, scale, what in _LINE_PLOTS:
        x, y = metrics.series(key)
        if len(y) == 0:
            missing.append(key)
            continue
        fig, ax = _new_figure()
        _smoothed(ax, x, y * scale, "step", what)
        if key == "loss":
            steps = _step_range(metrics)
            _versions_twin(ax, *_exported_versions(metrics, by="step"), end=steps[1] if steps else None)
        elif key == "embedding_std":
            _std_references(ax, run.embedding_dim, y)
        elif key == "buffer_fill":
            ax.set_ylim(0, 105)
        ax.set(title=title, ylabel=ylabel)
        _legend(ax, loc="upper right" if key == "loss" else "best")
        figures[stem] = fig
    evals = run.evals
    if evals:
        fig, ax = _new_figure()
        _eval_axes(ax, evals)
        figures["eval"] = fig
    else:
        missing.append("eval events")
    if _drift_events(metrics):
        fig, ax = _new_figure()
        _drift_axes(ax, _drift_events(metrics))
        figures["drift"] = fig
    else:
        missing.append("drift (export events with cka_prev)")
    if run.capture:
        fig, ax = _new_figure()
        _capture_axes(run, ax)
        figures["frames"] = fig
    else:
        missing.append(CAPTURE_HISTORY)
    if run.runtime:
        fig = _figure_of(1, 2, (12, 4))
        _runtime_version_axes(run, fig.axes[0])
        _latency_axes(run, fig.axes[1])
        figures["runtime"] = fig
    else:
        missing.append(RUNTIME_HISTORY)
    return figures, missing


def write_report(run_dir: Union[str, Path], out_dir: Optional[Union[str, Path]] = None) -> Report:
    """Write RUN_DIR/report/ (or `out_dir`): summary.md, overview.png and the detailed PNGs.

    Returns what was written and which series were not recorded. Raises RunDirError for a run
    directory without a readable metrics.jsonl, StorageError when the report cannot be written.
    """
    run = read_run(run_dir)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "report"
    figures, missing = _figures(run)
    plots = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for stem, fig in figures.items():
            fig.savefig(out / f"{stem}.png")
            plots.append(out / f"{stem}.png")
        summary = out / "summary.md"
        summary.write_text(_summary(run, plots, missing))
    except OSError as exc:
        raise StorageError(f"cannot write the report into {out}: {exc.strerror or exc}") from None
    return Report(plots, summary, missing)


def _figure_of(rows: int, cols: int, size: tuple[float, float]) -> "Figure":
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100, layout="constrained")
    fig.subplots(rows, cols, squeeze=False)
    return fig


def _new_figure() -> tuple["Figure", "Axes"]:
    fig = _figure_of(1, 1, (7, 4))
    return fig, fig.axes[0]


def _overview_figure(run: RunRecords) -> "Figure":
    """3 x 3 panels on a wall clock; rows: is it learning, is data flowing, is the robot being served."""
    fig = _figure_of(3, 3, (16, 11))
    (loss, std, quality), (capture, trainer, fill), (progress, version, latency) = np.asarray(fig.axes).reshape(3, 3)
    fig.suptitle(f"{run.run_dir.name}: is it learning? (top) is data flowing? (middle) is the robot served? (bottom)")
    rows = run.metrics.train

    t, y = run.since_start(rows, "loss")
    if len(y):
        _smoothed(loss, t, y, TIME_LABEL, LOSS_RECORD)
    else:
        _not_recorded(loss, "no training lines with a loss")
    _versions_twin(loss, *_exported_versions(run.metrics, by="time", t0=run.t0), end=run.t_end)
    loss.set(title="Loss", ylabel="loss (2 - 2 cos)")
    _legend(loss, loc="upper right")

    t, y = run.since_start(rows, "embedding_std")
    if len(y):
        _smoothed(std, t, y, TIME_LABEL, "last batch of each record")
    else:
        _not_recorded(std, "no embedding_std recorded")
    _std_references(std, run.embedding_dim, y)
    std.set(title="Embedding std", ylabel="std of l2-normalised embedding")
    _legend(std)

    if run.evals:
        _eval_axes(quality, run.evals)
    else:
        _not_recorded(quality, "no eval events:\nsee summary.md for the eval command")
    quality.set(title="Quality per exported version")

    if run.capture:
        _capture_axes(run, capture)
    else:
        _not_recorded(capture, f"no {CAPTURE_HISTORY} (capture runs under `byol-agent run` write it)")
    capture.set(title="Frames (capture)", xlabel=TIME_LABEL)

    _trainer_frames_axes(run, trainer)

    t, y = run.since_start(rows, "buffer_fill", scale=100.0)
    if len(y):
        fill.plot(t, y, lw=1.2)
    else:
        _not_recorded(fill, "no buffer_fill recorded")
    fill.set(title="Replay buffer fill", xlabel=TIME_LABEL, ylabel="% of buffer.capacity_frames", ylim=(0, 105))
    fill.grid(alpha=0.3)

    t, y = run.since_start(sorted(rows + run.metrics.of("stop"), key=lambda r: r["time"] if _number(r.get("time")) else 0.0), "step")
    if len(y):
        progress.plot(t, y, lw=1.2, label="step")
        rate_t, rate = run.since_start(rows, "img_per_s")
        if len(rate):
            twin = progress.twinx()
            twin.plot(rate_t, rate, color="tab:gray", lw=0.8, alpha=0.7, label="images / s")
            twin.set_ylabel("images / s")
            twin.legend(loc="lower right", fontsize=8)
    else:
        _not_recorded(progress, "no training lines")
    progress.set(title="Training progress", xlabel=TIME_LABEL, ylabel="step")
    progress.grid(alpha=0.3)
    _legend(progress, loc="upper left")

    _runtime_version_axes(run, version)
    _latency_axes(run, latency)
    for ax in (loss, std, capture, trainer, fill, progress, version, latency):  # one wall clock for all
        ax.set_xlim(0, max(run.t_end, 1.0) * 1.02)
    return fig


def _smoothed(ax: "Axes", x: np.ndarray, y: np.ndarray, xlabel: str, what: str = "record") -> None:
    """The recorded values, and over more than 20 of them a running mean of 1/20th of them; its legend says
    what is averaged (`what`: one recorded value, e.g. a metrics line's mean loss over train.metrics_every
    steps) and over how much of the x axis."""
    ax.plot(x, y, lw=0.8, alpha=0.5 if len(y) > 20 else 1.0, label=f"recorded ({what})",
            marker="o" if len(y) <= 3 else None)  # a line through one or two points is next to invisible
    if len(y) > 20:
        window = max(len(y) // 20, 2)
        span = float(np.median(np.diff(x))) * window if len(x) > 1 else 0.0
        unit = "steps" if xlabel == "step" else "s"
        ax.plot(x[window - 1 :], np.convolve(y, np.ones(window) / window, mode="valid"), lw=2,
                label=f"running mean of {window} records (~{span:.0f} {unit})")
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)


def _exported_versions(metrics: RunMetrics, *, by: str, t0: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(step or seconds since start, version) of each "export" event, in the order of `by`."""
    pairs = sorted(
        (float(e[by]) - t0, float(e["version"])) for e in metrics.of("export") if _number(e.get(by)) and _number(e.get("version"))
    )
    return np.asarray([p[0] for p in pairs], dtype=float), np.asarray([p[1] for p in pairs], dtype=float)


def _held(x: np.ndarray, y: np.ndarray, end: Optional[float]) -> tuple[np.ndarray, np.ndarray]:
    """A step function's points with its last value held until `end` (when that lies further right)."""
    if end is not None and len(x) and end > x[-1]:
        return np.append(x, end), np.append(y, y[-1])
    return x, y


def _versions_twin(ax: "Axes", x: np.ndarray, versions: np.ndarray, end: Optional[float] = None) -> None:
    """The exported version number as one step line on a right-hand axis (readable for any count)."""
    if not len(versions):
        return
    twin = ax.twinx()
    twin.step(*_held(x, versions, end), where="post", color="tab:green", lw=1.0, alpha=0.8,
              marker="|" if len(versions) <= 30 else None, label="exported version")
    twin.set_ylabel("exported version", color="tab:green")
    _integer_axis(twin, "y", versions)
    twin.legend(loc="lower left", fontsize=8)  # a falling loss leaves it free; the loss legend goes top right


def _std_references(ax: "Axes", dim: Optional[int], y: np.ndarray) -> None:
    """Collapse references: 0 (every embedding the same) and 1/sqrt(d) (unit vectors spread over the
    sphere: each coordinate has variance 1/d), the healthy level lightly / solo-learn monitor against."""
    ax.axhline(0.0, color="tab:red", lw=1, ls="--", label="collapsed (0)")
    top = float(np.max(y)) if len(y) else 0.0
    if dim:
        healthy = 1 / math.sqrt(dim)
        ax.axhline(healthy, color="tab:green", lw=1, ls="--", label=f"healthy ~ 1/sqrt(d) = {healthy:.3f} (d={dim})")
        top = max(top, healthy)
    if top > 0:
        ax.set_ylim(-0.03 * top, 1.15 * top)


def _versioned_evals(metrics: RunMetrics) -> list[dict[str, Any]]:
    """The eval events, each with the version published from its step when an export event has that step.

    The trainer's online probe scores the state it checkpoints or exports (trainer/quality_monitor.py)
    before that state has a version number (`run`'s exporter is another process), so its events carry
    the step; `byol-agent eval` events carry the manifest's version and step, which agree with this.
    """
    by_step = {int(e["step"]): e["version"] for e in metrics.of("export")
               if _number(e.get("step")) and isinstance(e.get("version"), int)}
    out = []
    for event in metrics.of("eval"):
        step = event.get("step")
        version = by_step.get(int(step)) if _number(step) else None
        out.append({**event, "version": version} if version is not None else event)
    return out


def _eval_by_version(evals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Last eval per exported version (re-evaluations overwrite), ordered by version."""
    latest: dict[int, dict[str, Any]] = {}
    for i, event in enumerate(evals):
        if not _number(event.get("knn_top1")):
            continue
        version = event.get("version")
        latest[version if isinstance(version, int) else -1 - i] = event
    return [latest[v] for v in sorted(latest)]


def _eval_axes(ax: "Axes", evals: list[dict[str, Any]]) -> None:
    """Accuracy against the version number (a numeric axis: hundreds of versions keep a few ticks); the
    random-init twin dashed, as a level line when it is one number (the online probe's reference)."""
    evals = [e for e in evals if isinstance(e.get("version"), int)]
    if not evals:
        _not_recorded(ax, "no eval of an exported version yet")
        return
    x = np.asarray([e["version"] for e in evals], dtype=float)
    markers = len(evals) <= 30
    for key, name, style, colour in (
        ("knn_top1", "kNN top-1", "-", "tab:blue"),
        ("linear_top1", "linear top-1", "-", "tab:orange"),
        ("random_knn_top1", "kNN, random init", "--", "tab:blue"),
        ("random_linear_top1", "linear, random init", "--", "tab:orange"),
    ):
        values = np.asarray([e[key] if _number(e.get(key)) else np.nan for e in evals], dtype=float)
        if np.all(np.isnan(values)):
            continue
        if "random" in key and np.nanmin(values) == np.nanmax(values):
            ax.axhline(float(np.nanmax(values)), ls=style, color=colour, alpha=0.6, label=f"{name} ({np.nanmax(values):.3f})")
        else:
            ax.plot(x, values, style, marker="o" if markers else None, color=colour, label=name,
                    alpha=0.6 if "random" in key else 1.0)
    last = evals[-1]
    if len(evals) <= 3:  # a few points: say the numbers, the eye cannot read them off a 0-1 axis
        ax.annotate(f"v{last['version']}: kNN {last['knn_top1']:.3f}", (x[-1], last["knn_top1"]),
                    textcoords="offset points", xytext=(6, 6), fontsize=8, color="tab:blue")
    _integer_axis(ax, "x", x)
    data = f" on {last['data']}" if last.get("data") else ""
    ax.set(title=f"Frozen-encoder accuracy per exported version{data}", xlabel="export version", ylabel="top-1",
           ylim=(0, 1))
    ax.grid(alpha=0.3)
    _legend(ax)


def _integer_axis(ax: "Axes", which: str, values: np.ndarray) -> None:
    """Integer ticks only on a version axis, also when it holds a single version (matplotlib's integer
    locator falls back to fractional ticks unless two integers are in view, hence min_n_ticks=1 and a
    half-version margin each side)."""
    from matplotlib.ticker import MaxNLocator

    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1, nbins=10 if which == "x" else 8))
    finite = values[np.isfinite(values)] if len(values) else values
    if len(finite) and finite.min() == finite.max():
        (ax.set_xlim if which == "x" else ax.set_ylim)(finite.min() - 0.5, finite.max() + 0.5)


def _drift_events(metrics: RunMetrics) -> list[dict[str, Any]]:
    """Export events that carry drift figures (export.compat.drift_record), ordered by version."""
    events = [e for e in metrics.of("export") if isinstance(e.get("version"), int) and _number(e.get("cka_prev"))]
    return sorted(events, key=lambda e: e["version"])


def _pinned_cka(event: dict[str, Any]) -> dict[int, float]:
    """{pinned version: CKA} of an export event's "cka_pinned" (malformed entries skipped)."""
    pinned = event.get("cka_pinned")
    if not isinstance(pinned, dict):
        return {}
    return {int(k): float(v) for k, v in pinned.items() if str(k).isdigit() and _number(v)}


def _drift_axes(ax: "Axes", events: list[dict[str, Any]]) -> None:
    """Linear CKA of each exported version to the previous one and to each pinned version; R² of its map back."""
    x = np.asarray([e["version"] for e in events], dtype=float)
    markers = "o" if len(events) <= 30 else None
    ax.plot(x, [e["cka_prev"] for e in events], marker=markers, color="tab:blue", label="CKA to previous version")
    r2 = np.asarray([e["r2"] if _number(e.get("r2")) else np.nan for e in events], dtype=float)
    ax.plot(x, r2, "--", color="tab:blue", alpha=0.5, label="R² of the map to previous")
    pins = sorted({pin for e in events for pin in _pinned_cka(e)})
    for i, pin in enumerate(pins):
        y = np.asarray([_pinned_cka(e).get(pin, np.nan) for e in events], dtype=float)
        ax.plot(x, y, marker=markers, color=f"C{(i + 1) % 10}", label=f"CKA to pinned version {pin}")
    _integer_axis(ax, "x", x)
    ax.set(title="Embedding drift per exported version (CKA 1 = same space)",
           xlabel="export version", ylabel="linear CKA / R²", ylim=(min(0.0, float(np.nanmin(r2)) if not np.all(np.isnan(r2)) else 0.0), 1.02))
    ax.grid(alpha=0.3)
    _legend(ax)


def _continued(values: list[float]) -> np.ndarray:
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


def _continued_counts(run: RunRecords, rows: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """`RunRecords.since_start` of a cumulative counter, continued across restarts (`_continued`)."""
    t, y = run.since_start(rows, key)
    return t, _continued(list(y))


CAPTURE_COUNTS = (("frames_read", "read"), ("kept", "kept"), ("skipped_novelty", "novelty skipped"),
                  ("sent", "sent"), ("dropped", "dropped"))


def _capture_axes(run: RunRecords, ax: "Axes") -> None:
    """Capture's cumulative counters over time (continued across restarts and resumed runs), and frames
    read per source when there are several."""
    for key, label in CAPTURE_COUNTS:
        t, y = _continued_counts(run, run.capture, key)
        if len(y):
            ax.plot(t, y, lw=1.2, label=label, ls="--" if key in ("skipped_novelty", "dropped") else "-")
    rows = [r for r in run.capture if _number(r.get("time")) and isinstance(r.get("frames_per_source"), list)]
    names = rows[-1].get("source_names") if rows else None
    width = len(rows[-1]["frames_per_source"]) if rows else 0
    if width > 1:
        for i in range(min(width, MAX_SERIES)):
            pts = [(r["time"] - run.t0, r["frames_per_source"][i]) for r in rows
                   if len(r["frames_per_source"]) > i and _number(r["frames_per_source"][i])]
            name = names[i] if isinstance(names, list) and i < len(names) else f"source {i}"
            ax.plot([p[0] for p in pts], _continued([p[1] for p in pts]), lw=0.8, ls=":", label=f"read: {name}")
    ax.set(title="Frames (capture)", xlabel=TIME_LABEL, ylabel="frames (cumulative)")
    ax.grid(alpha=0.3)
    _legend(ax, loc="upper left")


def _trainer_frames_axes(run: RunRecords, ax: "Axes") -> None:
    """Frames the trainer received (per camera when there are several) and dropped, over time."""
    rows = run.metrics.train + run.metrics.of("stop")
    rows = sorted((r for r in rows if _number(r.get("time"))), key=lambda r: r["time"])
    t, y = run.since_start(rows, "frames_in")
    if not len(y):
        _not_recorded(ax, "no frames_in recorded")
    else:
        ax.plot(t, y, lw=1.2, label="in")
        cameras = sorted({c for r in rows if isinstance(r.get("frames_per_camera"), dict) for c in r["frames_per_camera"]})
        if len(cameras) > 1:
            for camera in cameras[:MAX_SERIES]:
                pts = [(r["time"] - run.t0, r["frames_per_camera"][camera]) for r in rows
                       if isinstance(r.get("frames_per_camera"), dict) and _number(r["frames_per_camera"].get(camera))]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=0.8, ls=":", label=f"camera {camera}")
        t, y = run.since_start(rows, "frames_dropped")
        if len(y):
            ax.plot(t, y, lw=1.2, ls="--", color="tab:red", label="dropped (malformed or rejected)")
    ax.set(title="Frames (trainer)", xlabel=TIME_LABEL, ylabel="frames (cumulative)")
    ax.grid(alpha=0.3)
    _legend(ax, loc="upper left")


def _runtime_calls(run: RunRecords) -> Optional[int]:
    """Calls the runtime made over the whole run (continued across restarts); None when not recorded."""
    _, calls = _continued_counts(run, run.runtime, "calls")
    return int(calls[-1]) if len(calls) else None


def _runtime_version_axes(run: RunRecords, ax: "Axes") -> None:
    """The version the runtime served and the version exported, as step lines; swaps as one rug. A runtime
    that made no calls served nothing: it is said so, not drawn as a served line."""
    t, v = run.since_start(run.runtime, "version")
    exported_t, exported = _exported_versions(run.metrics, by="time", t0=run.t0)
    calls = _runtime_calls(run)
    if not len(v) and not len(exported):
        _not_recorded(ax, f"no {RUNTIME_HISTORY} and no exports")
    if len(exported):
        ax.step(*_held(exported_t, exported, run.t_end), where="post", color="tab:green", lw=1.0, alpha=0.7, label="exported")
    if len(v) and calls != 0:
        ax.step(*_held(t, v, run.t_end), where="post", color="tab:blue", lw=1.5, label="served")
        swap_t, swap_v = run.since_start([r for r in run.runtime if r.get("event") == "swap"], "version")
        if len(swap_t):
            ax.plot(swap_t, swap_v, ls="none", marker="|", ms=10, color="tab:blue",
                    label=f"swaps ({len(swap_t)})")
    elif len(v):
        ax.text(0.5, 0.9, "runtime made no calls: nothing served", ha="center", transform=ax.transAxes, fontsize=9,
                color="tab:red")
    elif len(exported):
        ax.text(0.5, 0.9, f"no {RUNTIME_HISTORY}: runtime not recorded", ha="center", transform=ax.transAxes, fontsize=8)
    _integer_axis(ax, "y", np.concatenate([v, exported]))
    ax.set(title="Runtime version", xlabel=TIME_LABEL, ylabel="encoder version")
    ax.grid(alpha=0.3)
    _legend(ax, loc="upper left")


def _latency_axes(run: RunRecords, ax: "Axes") -> None:
    """p50 / p99 latency of the runtime's calls per recorded window."""
    t50, p50 = run.since_start(run.runtime, "p50_ms")
    t99, p99 = run.since_start(run.runtime, "p99_ms")
    if len(p50) or len(p99):
        ax.plot(t50, p50, marker=".", lw=1.2, label="p50")
        ax.plot(t99, p99, marker=".", lw=1.2, label="p99")
        ax.set_ylim(bottom=0)
    elif _runtime_calls(run) == 0:
        _not_recorded(ax, "no calls: the runtime served no frame, so no latency")
    else:
        _not_recorded(ax, f"no latency in {RUNTIME_HISTORY}")
    ax.set(title="Runtime latency", xlabel=TIME_LABEL, ylabel="ms per call")
    ax.grid(alpha=0.3)
    _legend(ax, loc="upper left")


def _not_recorded(ax: "Axes", why: str) -> None:
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="tab:gray")


def _legend(ax: "Axes", loc: str = "best") -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc=loc, fontsize=8)


# --------------------------------------------------------------------------- summary


def _summary(run: RunRecords, plots: list[Path], missing: list[str]) -> str:
    metrics = run.metrics
    lines = [f"# Run report: {run.run_dir}", ""]
    if any(p.stem == "overview" for p in plots):
        lines += ["![overview](overview.png)", ""]
    lines += ["## Is it learning?", ""]
    lines.append(_steps_line(metrics))
    times = metrics.times()
    if len(times) >= 2:
        lines.append(f"- wall time: {max(times) - min(times):.1f} s from the first to the last record of {METRICS_NAME}")
    _, loss = metrics.series("loss")
    if len(loss):
        lines.append(f"- last loss: {loss[-1]:.4f} (first {loss[0]:.4f})")
    _, std = metrics.series("embedding_std")
    if len(std):
        ref = (f" (healthy ~ 1/sqrt({run.embedding_dim}) = {1 / math.sqrt(run.embedding_dim):.4f}, collapsed -> 0)"
               if run.embedding_dim else " (collapsed -> 0)")
        lines.append(f"- last embedding std: {std[-1]:.4f}{ref}")
    _, rate = metrics.series("img_per_s")
    if len(rate):
        lines.append(f"- throughput: median {np.median(rate):.1f} img/s, last {rate[-1]:.1f} img/s")
    starts, restores = metrics.of("start"), metrics.of("restore")
    if len(starts) > 1 or restores:
        lines.append(f"- trainer starts: {len(starts)} (resumed {sum(1 for e in starts if e.get('resumed_from'))}), "
                     f"restores after non-finite losses: {len(restores)}")
    lines.append(_exports_line(metrics))
    lines.append(_best_eval_line(run.evals))
    lines.append(_eval_command_line(run))

    lines += ["", "## Is data flowing?", ""]
    if run.capture:
        totals = {label: _continued_counts(run, run.capture, key)[1] for key, label in CAPTURE_COUNTS}
        counts = ", ".join(f"{label} {int(y[-1])}" for label, y in totals.items() if len(y))
        if counts:
            lines.append(f"- capture ({CAPTURE_HISTORY}, totals over restarts and resumes): {counts}")
    frames_in = _last(metrics, "frames_in")
    if frames_in is not None:
        dropped = _last(metrics, "frames_dropped")
        per_camera = _last(metrics, "frames_per_camera")
        cams = (" (" + ", ".join(f"camera {k}: {v}" for k, v in per_camera.items()) + ")"
                if isinstance(per_camera, dict) and len(per_camera) > 1 else "")
        lines.append(f"- frames in: {frames_in:g}{cams}" + (f", {dropped:g} dropped" if dropped is not None else ""))
    _, fill = metrics.series("buffer_fill")
    if len(fill):
        lines.append(f"- buffer fill: last {fill[-1]:.0%} (of buffer.capacity_frames)")

    lines += ["", "## Is the robot being served?", ""]
    lines.append(_runtime_line(run))

    skipped = [f"- skipped {count} unreadable line(s) of {name}" for name, count in run.bad_lines.items() if count]
    not_recorded = [f"- not recorded, so not plotted: {', '.join(missing)}"] if missing else []
    if skipped or not_recorded:
        lines += ["", "## Not recorded or unreadable", "", *skipped, *not_recorded]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots if p.stem != "overview"]
    return "\n".join(lines) + "\n"


def _last(metrics: RunMetrics, key: str) -> Any:
    """The value of `key` in the last training line or stop event holding it (counters are cumulative)."""
    rows = [r for r in metrics.train + metrics.of("stop") if key in r and r[key] is not None]
    rows.sort(key=lambda r: r["time"] if _number(r.get("time")) else -math.inf)
    return rows[-1][key] if rows else None


def _step_range(metrics: RunMetrics) -> Optional[tuple[int, int]]:
    """(first, final) step: first from the first start event (else the first training line); final the
    highest step of a training line or stop event (the stop event holds the step reached after the
    last metrics window, which a training line recorded only every `train.metrics_every` steps misses)."""
    starts = [e["step"] for e in metrics.of("start") if _number(e.get("step"))]
    steps, _ = metrics.series("step")
    reached = [float(s) for s in steps] + [float(e["step"]) for e in metrics.of("stop") if _number(e.get("step"))]
    if not reached:
        return None
    return int(starts[0] if starts else min(reached)), int(max(reached))


def _steps_line(metrics: RunMetrics) -> str:
    steps = _step_range(metrics)
    lines = f"{len(metrics.train)} metric lines"
    return f"- steps: {steps[0]} to {steps[1]} ({lines})" if steps else f"- steps: not recorded ({lines})"


def _exports_line(metrics: RunMetrics) -> str:
    published = metrics.of("export")
    refused = metrics.of("export_refused")
    versions = [e["version"] for e in published if isinstance(e.get("version"), int)]
    text = f"- exports: {len(published)} published"
    if versions:
        text += f" (versions {min(versions)} to {max(versions)})"
    text += f", {len(refused)} refused"
    if refused:
        reasons = Counter(str(e.get("reason", "no reason given")) for e in refused)
        text += " (" + "; ".join(f"{n}x {reason}" for reason, n in reasons.most_common(3)) + ")"
    drift = _drift_events(metrics)
    if drift:
        low = min(drift, key=lambda e: e["cka_prev"])
        text += f"; lowest CKA to the previous version {low['cka_prev']:.3f} (version {low['version']})"
        last = drift[-1]
        for pin, cka in sorted(_pinned_cka(last).items()):
            text += f"; version {last['version']} to pinned version {pin}: CKA {cka:.3f}"
    return text


def _best_eval_line(evals: list[dict[str, Any]]) -> str:
    """The best eval and, when it is another one, the latest: is the encoder getting better than its random init?"""
    if not evals:
        return "- best eval: none recorded"
    best = max(evals, key=lambda e: e["knn_top1"])
    text = f"- best eval: {_eval_text(best)}"
    latest = max(evals, key=lambda e: (e["step"] if _number(e.get("step")) else -1, e.get("time", 0)))
    if latest is not best:
        text += f"; latest: {_eval_text(latest)}"
    return text


def _eval_text(e: dict[str, Any]) -> str:
    """"version 3 (step 600), kNN top-1 0.412, linear top-1 0.503 (random init: kNN 0.314, linear 0.401) on digits"."""
    where = f"version {e['version']}" if isinstance(e.get("version"), int) else "no version"
    if _number(e.get("step")):
        where = f"{where} (step {e['step']})" if isinstance(e.get("version"), int) else f"step {e['step']} (not exported)"
    text = f"{where}, kNN top-1 {e['knn_top1']:.3f}"
    if _number(e.get("linear_top1")):
        text += f", linear top-1 {e['linear_top1']:.3f}"
    if _number(e.get("random_knn_top1")):
        text += f" (random init: kNN {e['random_knn_top1']:.3f}"
        if _number(e.get("random_linear_top1")):
            text += f", linear {e['random_linear_top1']:.3f}"
        text += ")"
    if e.get("data"):
        text += f" on {e['data']}"
    return text


def _eval_command_line(run: RunRecords) -> str:
    """A `byol-agent eval` line that scores the latest export and appends it to this run's metrics."""
    exports = run.run_dir / "exports"
    if not (exports / "LATEST").is_file():
        return f"- nothing to evaluate yet: {exports} holds no published export (no LATEST)"
    data = run.probe_data or "digits"
    words = ["byol-agent", "eval", "--encoder", str(exports), "--data", data, "--run-dir", str(run.run_dir)]
    if run.embedding_dim is not None:  # config.yaml was read: score with the run's own model section
        words += ["--config", str(run.run_dir / "config.yaml")]
    hint = "" if run.probe_data else " (for your cameras' scenes, replace digits with a folder of labelled images, one subfolder per class)"
    return f"- score the latest export (kNN and linear vs random init): `{shlex.join(words)}`{hint}"


def _runtime_line(run: RunRecords) -> str:
    if not run.runtime:
        return f"- runtime: not recorded (no {RUNTIME_HISTORY}; `byol-agent run` starts a runtime consumer that writes it)"
    last = run.runtime[-1]
    latency = [r for r in run.runtime if _number(r.get("p50_ms"))]
    swaps = sum(1 for r in run.runtime if r.get("event") == "swap")
    text = f"- runtime: serving version {last.get('version', '?')}, {swaps} swap(s)"
    calls = _runtime_calls(run)
    if calls is not None:
        _, failures = _continued_counts(run, run.runtime, "failures")
        text += f", {calls} calls, {int(failures[-1]) if len(failures) else 0} failed"
    if latency:
        p99 = latency[-1]["p99_ms"] if _number(latency[-1].get("p99_ms")) else math.nan
        text += (f"; latency p50 {latency[-1]['p50_ms']:.2f} ms, p99 {p99:.2f} ms (last window), "
                 f"worst p99 {max((r['p99_ms'] for r in latency if _number(r.get('p99_ms'))), default=math.nan):.2f} ms")
    return text
