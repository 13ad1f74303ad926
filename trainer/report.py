"""A run directory's metrics.jsonl as PNG plots and a short markdown summary.

The trainer writes one JSON object per line: training lines (step, loss, embedding_std,
img_per_s, buffer_fill, ...) and event lines ({"event": "export" | "export_refused" | "eval"}).
Runs differ in what they record, so the report plots what exists and names what is missing
instead of failing. Figures are drawn with matplotlib's object API (no pyplot, no global backend
state), which renders headless.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np

from agent.core.errors import ByolAgentError, StorageError
from trainer.metrics import METRICS_NAME

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                step = row.get("step")
                xs.append(step if isinstance(step, (int, float)) else i)
                ys.append(float(value))
        return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)

    def of(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]


@dataclass(frozen=True)
class Report:
    plots: list[Path]
    summary: Path
    missing: list[str]


def read_metrics(run_dir: Union[str, Path]) -> RunMetrics:
    """Parse RUN_DIR/metrics.jsonl, skipping (and counting) lines a crash may have left half-written."""
    path = _metrics_path(run_dir)
    train: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    bad = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if not isinstance(row, dict):
                bad += 1
            elif "event" in row:
                events.append(row)
            else:
                train.append(row)
    return RunMetrics(train, events, bad)


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


# --------------------------------------------------------------------------- plots

_LINE_PLOTS = (
    # file stem, training key, title, y label
    ("loss", "loss", "BYOL loss", "loss (2 - 2 cos, both views)"),
    ("embedding_std", "embedding_std", "Embedding std (collapse monitor)", "std of l2-normalised embedding"),
    ("throughput", "img_per_s", "Training throughput", "images / s"),
    ("buffer_fill", "buffer_fill", "Replay buffer fill", "buffer fill"),
)


def report_figures(run_dir: Union[str, Path]) -> tuple[dict[str, "Figure"], list[str]]:
    """The report's figures by file stem, and the series that were not recorded (so not drawn)."""
    metrics = read_metrics(run_dir)
    figures: dict[str, "Figure"] = {}
    missing: list[str] = []
    exports = [e for e in metrics.of("export") if isinstance(e.get("step"), (int, float))]
    for stem, key, title, ylabel in _LINE_PLOTS:
        x, y = metrics.series(key)
        if len(y) == 0:
            missing.append(key)
            continue
        figures[stem] = _line_figure(x, y, title, ylabel, exports if key == "loss" else [])
    evals = _eval_by_version(metrics.of("eval"))
    if evals:
        figures["eval"] = _eval_figure(evals)
    else:
        missing.append("eval events")
    return figures, missing


def write_report(run_dir: Union[str, Path], out_dir: Optional[Union[str, Path]] = None) -> Report:
    """Write RUN_DIR/report/*.png and summary.md; return what was written and which series were missing."""
    metrics = read_metrics(run_dir)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    figures, missing = report_figures(run_dir)
    plots = []
    for stem, fig in figures.items():
        fig.savefig(out / f"{stem}.png")
        plots.append(out / f"{stem}.png")
    evals = _eval_by_version(metrics.of("eval"))
    summary = out / "summary.md"
    summary.write_text(_summary(Path(run_dir), metrics, evals, plots, missing))
    return Report(plots, summary, missing)


def _line_figure(x: np.ndarray, y: np.ndarray, title: str, ylabel: str, exports: list[dict[str, Any]]) -> "Figure":
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.plot(x, y, lw=0.8, alpha=0.5 if len(y) > 20 else 1.0, label="recorded")
    if len(y) > 20:
        window = max(len(y) // 20, 2)
        smooth = np.convolve(y, np.ones(window) / window, mode="valid")
        ax.plot(x[window - 1 :], smooth, lw=2, label=f"mean of {window}")
    for i, event in enumerate(exports):
        ax.axvline(event["step"], color="tab:green", lw=0.8, ls=":", label="export" if i == 0 else None)
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    ax.grid(alpha=0.3)
    if len(y) > 20 or exports:
        ax.legend(loc="best", fontsize=8)
    return fig


def _eval_by_version(evals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Last eval per exported version (re-evaluations overwrite), ordered by version."""
    latest: dict[int, dict[str, Any]] = {}
    for i, event in enumerate(evals):
        if not isinstance(event.get("knn_top1"), (int, float)):
            continue
        version = event.get("version")
        latest[version if isinstance(version, int) else -1 - i] = event
    return [latest[v] for v in sorted(latest)]


def _eval_figure(evals: list[dict[str, Any]]) -> "Figure":
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    labels = [str(e.get("version", "?")) for e in evals]
    x = np.arange(len(evals))
    for key, name, style, colour in (
        ("knn_top1", "kNN top-1", "o-", "tab:blue"),
        ("linear_top1", "linear top-1", "s-", "tab:orange"),
        ("random_knn_top1", "kNN, random init", "o--", "tab:blue"),
        ("random_linear_top1", "linear, random init", "s--", "tab:orange"),
    ):
        values = [e.get(key) if isinstance(e.get(key), (int, float)) else np.nan for e in evals]
        if not all(np.isnan(values)):
            ax.plot(x, values, style, color=colour, label=name, alpha=0.5 if "random" in key else 1.0)
    ax.set_xticks(x, labels)
    ax.set(title="Frozen-encoder accuracy per exported version", xlabel="export version", ylabel="top-1", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return fig


# --------------------------------------------------------------------------- summary


def _summary(
    run_dir: Path, metrics: RunMetrics, evals: list[dict[str, Any]], plots: list[Path], missing: list[str]
) -> str:
    lines = [f"# Run report: {run_dir}", ""]
    steps, _ = metrics.series("step")
    if len(steps):
        lines.append(f"- steps: {int(steps[0])} to {int(steps[-1])} ({len(metrics.train)} metric lines)")
    else:
        lines.append(f"- steps: not recorded ({len(metrics.train)} metric lines)")
    _, times = metrics.series("time")
    if len(times) >= 2:
        lines.append(f"- wall time: {times[-1] - times[0]:.1f} s between the first and last metric line")
    for key, label, fmt in (("loss", "last loss", ".4f"), ("embedding_std", "last embedding std", ".4f")):
        _, y = metrics.series(key)
        if len(y):
            lines.append(f"- {label}: {y[-1]:{fmt}}")
    _, rate = metrics.series("img_per_s")
    if len(rate):
        lines.append(f"- throughput: median {np.median(rate):.1f} img/s, last {rate[-1]:.1f} img/s")
    _, fill = metrics.series("buffer_fill")
    if len(fill):
        lines.append(f"- buffer fill: last {fill[-1]:g}")
    _, frames_in = metrics.series("frames_in")
    _, dropped = metrics.series("frames_dropped")
    if len(frames_in):
        lost = f", {dropped[-1]:g} dropped" if len(dropped) else ""
        lines.append(f"- frames in: {frames_in[-1]:g}{lost}")
    starts, restores = metrics.of("start"), metrics.of("restore")
    if len(starts) > 1 or restores:
        lines.append(f"- trainer starts: {len(starts)} (resumed {sum(1 for e in starts if e.get('resumed_from'))}), "
                     f"restores after non-finite losses: {len(restores)}")
    lines.append(_exports_line(metrics))
    lines.append(_best_eval_line(evals))
    if metrics.bad_lines:
        lines.append(f"- skipped {metrics.bad_lines} unreadable line(s) of {METRICS_NAME}")
    if missing:
        lines.append(f"- not recorded, so not plotted: {', '.join(missing)}")
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


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
    return text


def _best_eval_line(evals: list[dict[str, Any]]) -> str:
    if not evals:
        return "- best eval: none recorded (run `byol-agent eval --run-dir`)"
    best = max(evals, key=lambda e: e["knn_top1"])
    text = f"- best eval: version {best.get('version', '?')}, kNN top-1 {best['knn_top1']:.3f}"
    if isinstance(best.get("linear_top1"), (int, float)):
        text += f", linear top-1 {best['linear_top1']:.3f}"
    if isinstance(best.get("random_knn_top1"), (int, float)):
        text += f" (random init: kNN {best['random_knn_top1']:.3f}"
        if isinstance(best.get("random_linear_top1"), (int, float)):
            text += f", linear {best['random_linear_top1']:.3f}"
        text += ")"
    if best.get("data"):
        text += f" on {best['data']}"
    return text
