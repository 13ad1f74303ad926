"""The report's figures: the overview (is it learning, is data flowing, is the robot served, on one wall
clock) and the detailed per-step plots, drawn from `RunRecords` with `trainer.report_panels`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from trainer.report_panels import (
    TIME_LABEL,
    capture_axes,
    drift_axes,
    eval_axes,
    figure_of,
    latency_axes,
    legend,
    new_figure,
    not_recorded,
    runtime_version_axes,
    smoothed,
    std_references,
    trainer_frames_axes,
    versions_twin,
)
from trainer.run_records import (
    CAPTURE_HISTORY,
    RUNTIME_HISTORY,
    RunRecords,
    drift_events,
    exported_versions,
    is_number,
    read_run,
    step_range,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure


LOSS_RECORD = "mean over train.metrics_every steps"


_LINE_PLOTS = (
    # file stem, training key, title, y label, scale, what one metrics line's value is
    ("loss", "loss", "BYOL loss", "loss (2 - 2 cos, both views)", 1.0, LOSS_RECORD),
    (
        "embedding_std",
        "embedding_std",
        "Embedding std (collapse monitor)",
        "std of l2-normalised embedding",
        1.0,
        "last batch of each record",
    ),
    ("throughput", "img_per_s", "Training throughput", "images / s", 1.0, "over train.metrics_every steps"),
    (
        "buffer_fill",
        "buffer_fill",
        "Replay buffer fill",
        "buffer fill (% of buffer.capacity_frames)",
        100.0,
        "at each record",
    ),
)


def report_figures(run_dir: Union[str, Path]) -> tuple[dict[str, "Figure"], list[str]]:
    """The report's figures by file stem ("overview" first), and the series that were not recorded."""
    return draw_figures(read_run(run_dir))


def draw_figures(run: RunRecords) -> tuple[dict[str, "Figure"], list[str]]:
    metrics = run.metrics
    figures: dict[str, "Figure"] = {"overview": _overview_figure(run)}
    missing: list[str] = []
    for stem, key, title, ylabel, scale, what in _LINE_PLOTS:
        x, y = metrics.series(key)
        if len(y) == 0:
            missing.append(key)
            continue
        fig, ax = new_figure()
        smoothed(ax, x, y * scale, "step", what)
        if key == "loss":
            steps = step_range(metrics)
            versions_twin(ax, *exported_versions(metrics, by="step"), end=steps[1] if steps else None)
        elif key == "embedding_std":
            std_references(ax, run.embedding_dim, y)
        elif key == "buffer_fill":
            ax.set_ylim(0, 105)
        ax.set(title=title, ylabel=ylabel)
        legend(ax, loc="upper right" if key == "loss" else "best")
        figures[stem] = fig
    evals = run.evals
    if evals:
        fig, ax = new_figure()
        eval_axes(ax, evals)
        figures["eval"] = fig
    else:
        missing.append("eval events")
    if drift_events(metrics):
        fig, ax = new_figure()
        drift_axes(ax, drift_events(metrics))
        figures["drift"] = fig
    else:
        missing.append("drift (export events with cka_prev)")
    if run.capture:
        fig, ax = new_figure()
        capture_axes(run, ax)
        figures["frames"] = fig
    else:
        missing.append(CAPTURE_HISTORY)
    if run.runtime:
        fig = figure_of(1, 2, (12, 4))
        runtime_version_axes(run, fig.axes[0])
        latency_axes(run, fig.axes[1])
        figures["runtime"] = fig
    else:
        missing.append(RUNTIME_HISTORY)
    return figures, missing


def _overview_figure(run: RunRecords) -> "Figure":
    """3 x 3 panels on a wall clock; rows: is it learning, is data flowing, is the robot being served."""
    fig = figure_of(3, 3, (16, 11))
    (loss, std, quality), (capture, trainer, fill), (progress, version, latency) = np.asarray(fig.axes).reshape(3, 3)
    fig.suptitle(f"{run.run_dir.name}: is it learning? (top) is data flowing? (middle) is the robot served? (bottom)")
    rows = run.metrics.train

    t, y = run.since_start(rows, "loss")
    if len(y):
        smoothed(loss, t, y, TIME_LABEL, LOSS_RECORD)
    else:
        not_recorded(loss, "no training lines with a loss")
    versions_twin(loss, *exported_versions(run.metrics, by="time", t0=run.t0), end=run.t_end)
    loss.set(title="Loss", ylabel="loss (2 - 2 cos)")
    legend(loss, loc="upper right")

    t, y = run.since_start(rows, "embedding_std")
    if len(y):
        smoothed(std, t, y, TIME_LABEL, "last batch of each record")
    else:
        not_recorded(std, "no embedding_std recorded")
    std_references(std, run.embedding_dim, y)
    std.set(title="Embedding std", ylabel="std of l2-normalised embedding")
    legend(std)

    if run.evals:
        eval_axes(quality, run.evals)
    else:
        not_recorded(quality, "no eval events:\nsee summary.md for the eval command")
    quality.set(title="Quality per exported version")

    if run.capture:
        capture_axes(run, capture)
    else:
        not_recorded(capture, f"no {CAPTURE_HISTORY} (capture runs under `byol-agent run` write it)")
    capture.set(title="Frames (capture)", xlabel=TIME_LABEL)

    trainer_frames_axes(run, trainer)

    t, y = run.since_start(rows, "buffer_fill", scale=100.0)
    if len(y):
        fill.plot(t, y, lw=1.2)
    else:
        not_recorded(fill, "no buffer_fill recorded")
    fill.set(title="Replay buffer fill", xlabel=TIME_LABEL, ylabel="% of buffer.capacity_frames", ylim=(0, 105))
    fill.grid(alpha=0.3)

    by_time: list[dict[str, Any]] = sorted(
        rows + run.metrics.of("stop"), key=lambda r: r["time"] if is_number(r.get("time")) else 0.0
    )
    t, y = run.since_start(by_time, "step")
    if len(y):
        progress.plot(t, y, lw=1.2, label="step")
        rate_t, rate = run.since_start(rows, "img_per_s")
        if len(rate):
            twin = progress.twinx()
            twin.plot(rate_t, rate, color="tab:gray", lw=0.8, alpha=0.7, label="images / s")
            twin.set_ylabel("images / s")
            twin.legend(loc="lower right", fontsize=8)
    else:
        not_recorded(progress, "no training lines")
    progress.set(title="Training progress", xlabel=TIME_LABEL, ylabel="step")
    progress.grid(alpha=0.3)
    legend(progress, loc="upper left")

    runtime_version_axes(run, version)
    latency_axes(run, latency)
    for ax in (loss, std, capture, trainer, fill, progress, version, latency):  # one wall clock for all
        ax.set_xlim(0, max(run.t_end, 1.0) * 1.02)
    return fig
