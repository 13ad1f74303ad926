"""The report's panels: one function per matplotlib Axes it fills (loss, std references, evals, drift,
capture and trainer frames, runtime version and latency), shared by the overview and the detailed figures.
matplotlib's object API only (no pyplot, no global backend state), imported when a figure is made.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from trainer.run_records import (
    CAPTURE_COUNTS,
    RUNTIME_HISTORY,
    RunRecords,
    continued,
    continued_counts,
    exported_versions,
    is_number,
    pinned_cka,
    runtime_calls,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


TIME_LABEL = "seconds since start"


MAX_SERIES = 6  # per-camera / per-source lines drawn at most (the rest are summed in the summary)


def figure_of(rows: int, cols: int, size: tuple[float, float]) -> "Figure":
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100, layout="constrained")
    fig.subplots(rows, cols, squeeze=False)
    return fig


def new_figure() -> tuple["Figure", "Axes"]:
    fig = figure_of(1, 1, (7, 4))
    return fig, fig.axes[0]


def smoothed(ax: "Axes", x: np.ndarray, y: np.ndarray, xlabel: str, what: str = "record") -> None:
    """The recorded values, and over more than 20 of them a running mean of 1/20th of them; its legend says
    what is averaged (`what`: one recorded value, e.g. a metrics line's mean loss over train.metrics_every
    steps) and over how much of the x axis."""
    ax.plot(
        x, y, lw=0.8, alpha=0.5 if len(y) > 20 else 1.0, label=f"recorded ({what})", marker="o" if len(y) <= 3 else None
    )  # a line through one or two points is next to invisible
    if len(y) > 20:
        window = max(len(y) // 20, 2)
        span = float(np.median(np.diff(x))) * window if len(x) > 1 else 0.0
        unit = "steps" if xlabel == "step" else "s"
        ax.plot(
            x[window - 1 :],
            np.convolve(y, np.ones(window) / window, mode="valid"),
            lw=2,
            label=f"running mean of {window} records (~{span:.0f} {unit})",
        )
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)


def held(x: np.ndarray, y: np.ndarray, end: Optional[float]) -> tuple[np.ndarray, np.ndarray]:
    """A step function's points with its last value held until `end` (when that lies further right)."""
    if end is not None and len(x) and end > x[-1]:
        return np.append(x, end), np.append(y, y[-1])
    return x, y


def versions_twin(ax: "Axes", x: np.ndarray, versions: np.ndarray, end: Optional[float] = None) -> None:
    """The exported version number as one step line on a right-hand axis (readable for any count)."""
    if not len(versions):
        return
    twin = ax.twinx()
    twin.step(
        *held(x, versions, end),
        where="post",
        color="tab:green",
        lw=1.0,
        alpha=0.8,
        marker="|" if len(versions) <= 30 else None,
        label="exported version",
    )
    twin.set_ylabel("exported version", color="tab:green")
    _integer_axis(twin, "y", versions)
    twin.legend(loc="lower left", fontsize=8)  # a falling loss leaves it free; the loss legend goes top right


def std_references(ax: "Axes", dim: Optional[int], y: np.ndarray) -> None:
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


def eval_axes(ax: "Axes", evals: list[dict[str, Any]]) -> None:
    """Accuracy against the version number (a numeric axis: hundreds of versions keep a few ticks); the
    random-init twin dashed, as a level line when it is one number (the online probe's reference)."""
    evals = [e for e in evals if isinstance(e.get("version"), int)]
    if not evals:
        not_recorded(ax, "no eval of an exported version yet")
        return
    x = np.asarray([e["version"] for e in evals], dtype=float)
    markers = len(evals) <= 30
    for key, name, style, colour in (
        ("knn_top1", "kNN top-1", "-", "tab:blue"),
        ("linear_top1", "linear top-1", "-", "tab:orange"),
        ("random_knn_top1", "kNN, random init", "--", "tab:blue"),
        ("random_linear_top1", "linear, random init", "--", "tab:orange"),
    ):
        values = np.asarray([e[key] if is_number(e.get(key)) else np.nan for e in evals], dtype=float)
        if np.all(np.isnan(values)):
            continue
        if "random" in key and np.nanmin(values) == np.nanmax(values):
            ax.axhline(
                float(np.nanmax(values)), ls=style, color=colour, alpha=0.6, label=f"{name} ({np.nanmax(values):.3f})"
            )
        else:
            ax.plot(
                x,
                values,
                style,
                marker="o" if markers else None,
                color=colour,
                label=name,
                alpha=0.6 if "random" in key else 1.0,
            )
    last = evals[-1]
    if len(evals) <= 3:  # a few points: say the numbers, the eye cannot read them off a 0-1 axis
        ax.annotate(
            f"v{last['version']}: kNN {last['knn_top1']:.3f}",
            (x[-1], last["knn_top1"]),
            textcoords="offset points",
            xytext=(6, 6),
            fontsize=8,
            color="tab:blue",
        )
    _integer_axis(ax, "x", x)
    data = f" on {last['data']}" if last.get("data") else ""
    ax.set(
        title=f"Frozen-encoder accuracy per exported version{data}",
        xlabel="export version",
        ylabel="top-1",
        ylim=(0, 1),
    )
    ax.grid(alpha=0.3)
    legend(ax)


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


def drift_axes(ax: "Axes", events: list[dict[str, Any]]) -> None:
    """Linear CKA of each exported version to the previous one and to each pinned version; R² of its map back."""
    x = np.asarray([e["version"] for e in events], dtype=float)
    markers = "o" if len(events) <= 30 else None
    ax.plot(x, [e["cka_prev"] for e in events], marker=markers, color="tab:blue", label="CKA to previous version")
    r2 = np.asarray([e["r2"] if is_number(e.get("r2")) else np.nan for e in events], dtype=float)
    ax.plot(x, r2, "--", color="tab:blue", alpha=0.5, label="R² of the map to previous")
    pins = sorted({pin for e in events for pin in pinned_cka(e)})
    for i, pin in enumerate(pins):
        y = np.asarray([pinned_cka(e).get(pin, np.nan) for e in events], dtype=float)
        ax.plot(x, y, marker=markers, color=f"C{(i + 1) % 10}", label=f"CKA to pinned version {pin}")
    _integer_axis(ax, "x", x)
    ax.set(
        title="Embedding drift per exported version (CKA 1 = same space)",
        xlabel="export version",
        ylabel="linear CKA / R²",
        ylim=(min(0.0, float(np.nanmin(r2)) if not np.all(np.isnan(r2)) else 0.0), 1.02),
    )
    ax.grid(alpha=0.3)
    legend(ax)


def capture_axes(run: RunRecords, ax: "Axes") -> None:
    """Capture's cumulative counters over time (continued across restarts and resumed runs), and frames
    read per source when there are several."""
    for key, label in CAPTURE_COUNTS:
        t, y = continued_counts(run, run.capture, key)
        if len(y):
            ax.plot(t, y, lw=1.2, label=label, ls="--" if key in ("skipped_novelty", "superseded", "dropped") else "-")
    rows = [r for r in run.capture if r.time is not None and r.frames_per_source is not None]
    names = rows[-1].source_names if rows else None
    width = len(rows[-1].frames_per_source or []) if rows else 0
    if width > 1:
        for i in range(min(width, MAX_SERIES)):
            pts = [
                (r.time - run.t0, r.frames_per_source[i])
                for r in rows
                if r.time is not None
                and r.frames_per_source is not None
                and len(r.frames_per_source) > i
                and is_number(r.frames_per_source[i])
            ]
            name = names[i] if isinstance(names, list) and i < len(names) else f"source {i}"
            ax.plot([p[0] for p in pts], continued([p[1] for p in pts]), lw=0.8, ls=":", label=f"read: {name}")
    ax.set(title="Frames (capture)", xlabel=TIME_LABEL, ylabel="frames (cumulative)")
    ax.grid(alpha=0.3)
    legend(ax, loc="upper left")


def trainer_frames_axes(run: RunRecords, ax: "Axes") -> None:
    """Frames the trainer received (per camera when there are several) and dropped, over time."""
    rows = run.metrics.train + run.metrics.of("stop")
    rows = sorted((r for r in rows if is_number(r.get("time"))), key=lambda r: r["time"])
    t, y = run.since_start(rows, "frames_in")
    if not len(y):
        not_recorded(ax, "no frames_in recorded")
    else:
        ax.plot(t, y, lw=1.2, label="in")
        cameras = sorted(
            {c for r in rows if isinstance(r.get("frames_per_camera"), dict) for c in r["frames_per_camera"]}
        )
        if len(cameras) > 1:
            for camera in cameras[:MAX_SERIES]:
                pts = [
                    (r["time"] - run.t0, r["frames_per_camera"][camera])
                    for r in rows
                    if isinstance(r.get("frames_per_camera"), dict) and is_number(r["frames_per_camera"].get(camera))
                ]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=0.8, ls=":", label=f"camera {camera}")
        t, y = run.since_start(rows, "frames_dropped")
        if len(y):
            ax.plot(t, y, lw=1.2, ls="--", color="tab:red", label="dropped (malformed or rejected)")
    ax.set(title="Frames (trainer)", xlabel=TIME_LABEL, ylabel="frames (cumulative)")
    ax.grid(alpha=0.3)
    legend(ax, loc="upper left")


def runtime_version_axes(run: RunRecords, ax: "Axes") -> None:
    """The version the runtime served and the version exported, as step lines; swaps as one rug. A runtime
    that made no calls served nothing: it is said so, not drawn as a served line."""
    t, v = run.since_start(run.runtime, "version")
    exported_t, exported = exported_versions(run.metrics, by="time", t0=run.t0)
    calls = runtime_calls(run)
    if not len(v) and not len(exported):
        not_recorded(ax, f"no {RUNTIME_HISTORY} and no exports")
    if len(exported):
        ax.step(
            *held(exported_t, exported, run.t_end), where="post", color="tab:green", lw=1.0, alpha=0.7, label="exported"
        )
    if len(v) and calls != 0:
        ax.step(*held(t, v, run.t_end), where="post", color="tab:blue", lw=1.5, label="served")
        swap_t, swap_v = run.since_start([r for r in run.runtime if r.event == "swap"], "version")
        if len(swap_t):
            ax.plot(swap_t, swap_v, ls="none", marker="|", ms=10, color="tab:blue", label=f"swaps ({len(swap_t)})")
    elif len(v):
        ax.text(
            0.5,
            0.9,
            "runtime made no calls: nothing served",
            ha="center",
            transform=ax.transAxes,
            fontsize=9,
            color="tab:red",
        )
    elif len(exported):
        ax.text(
            0.5, 0.9, f"no {RUNTIME_HISTORY}: runtime not recorded", ha="center", transform=ax.transAxes, fontsize=8
        )
    _integer_axis(ax, "y", np.concatenate([v, exported]))
    ax.set(title="Runtime version", xlabel=TIME_LABEL, ylabel="encoder version")
    ax.grid(alpha=0.3)
    legend(ax, loc="upper left")


def latency_axes(run: RunRecords, ax: "Axes") -> None:
    """p50 / p99 latency of the runtime's calls per recorded window."""
    t50, p50 = run.since_start(run.runtime, "p50_ms")
    t99, p99 = run.since_start(run.runtime, "p99_ms")
    if len(p50) or len(p99):
        ax.plot(t50, p50, marker=".", lw=1.2, label="p50")
        ax.plot(t99, p99, marker=".", lw=1.2, label="p99")
        ax.set_ylim(bottom=0)
    elif runtime_calls(run) == 0:
        not_recorded(ax, "no calls: the runtime served no frame, so no latency")
    else:
        not_recorded(ax, f"no latency in {RUNTIME_HISTORY}")
    ax.set(title="Runtime latency", xlabel=TIME_LABEL, ylabel="ms per call")
    ax.grid(alpha=0.3)
    legend(ax, loc="upper left")


def not_recorded(ax: "Axes", why: str) -> None:
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="tab:gray")


def legend(ax: "Axes", loc: str = "best") -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc=loc, fontsize=8)  # type: ignore[call-overload]  # matplotlib types loc as a Literal of the names callers pass
