"""The report's summary.md: the three questions answered in lines of text, what was not recorded, the plots."""

from __future__ import annotations

import math
import shlex
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from trainer.metrics import METRICS_NAME
from trainer.run_records import (
    CAPTURE_COUNTS,
    CAPTURE_HISTORY,
    RUNTIME_HISTORY,
    RunMetrics,
    RunRecords,
    continued_counts,
    drift_events,
    is_number,
    last_value,
    pinned_cka,
    runtime_calls,
    step_range,
)


def summary_markdown(run: RunRecords, plots: list[Path], missing: list[str]) -> str:
    metrics = run.metrics
    lines = [f"# Run report: {run.run_dir}", "", verdict_line(run), ""]
    if any(p.stem == "overview" for p in plots):
        lines += ["![overview](overview.png)", ""]
    lines += ["## Is it learning?", ""]
    lines.append(_steps_line(metrics))
    times = metrics.times()
    if len(times) >= 2:
        lines.append(
            f"- wall time: {max(times) - min(times):.1f} s from the first to the last record of {METRICS_NAME}"
        )
    _, loss = metrics.series("loss")
    if len(loss):
        lines.append(f"- last loss: {loss[-1]:.4f} (first {loss[0]:.4f})")
    _, std = metrics.series("embedding_std")
    if len(std):
        ref = (
            f" (healthy ~ 1/sqrt({run.embedding_dim}) = {1 / math.sqrt(run.embedding_dim):.4f}, collapsed -> 0)"
            if run.embedding_dim
            else " (collapsed -> 0)"
        )
        lines.append(f"- last embedding std: {std[-1]:.4f}{ref}")
    _, rate = metrics.series("img_per_s")
    if len(rate):
        lines.append(f"- throughput: median {np.median(rate):.1f} img/s, last {rate[-1]:.1f} img/s")
    starts, restores = metrics.of("start"), metrics.of("restore")
    if len(starts) > 1 or restores:
        lines.append(
            f"- trainer starts: {len(starts)} (resumed {sum(1 for e in starts if e.get('resumed_from'))}), "
            f"restores after non-finite losses: {len(restores)}"
        )
    lines.append(_exports_line(metrics))
    lines.append(_best_eval_line(run.evals))
    lines.append(_eval_command_line(run))

    lines += ["", "## Is data flowing?", ""]
    if run.capture:
        totals = {label: continued_counts(run, run.capture, key)[1] for key, label in CAPTURE_COUNTS}
        counts = ", ".join(f"{label} {int(y[-1])}" for label, y in totals.items() if len(y))
        if counts:
            lines.append(f"- capture ({CAPTURE_HISTORY}, totals over restarts and resumes): {counts}")
    frames_in = last_value(metrics, "frames_in")
    if frames_in is not None:
        dropped = last_value(metrics, "frames_dropped")
        per_camera = last_value(metrics, "frames_per_camera")
        cams = (
            " (" + ", ".join(f"camera {k}: {v}" for k, v in per_camera.items()) + ")"
            if isinstance(per_camera, dict) and len(per_camera) > 1
            else ""
        )
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


def _steps_line(metrics: RunMetrics) -> str:
    steps = step_range(metrics)
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
    drift = drift_events(metrics)
    if drift:
        low = min(drift, key=lambda e: e["cka_prev"])
        text += f"; lowest CKA to the previous version {low['cka_prev']:.3f} (version {low['version']})"
        last = drift[-1]
        for pin, cka in sorted(pinned_cka(last).items()):
            text += f"; version {last['version']} to pinned version {pin}: CKA {cka:.3f}"
    return text


def _recency(e: dict[str, Any]) -> tuple[float, float]:
    """Sort key of an eval event: its step (-1 without one), then its time; the max is the latest."""
    return (e["step"] if is_number(e.get("step")) else -1, e.get("time", 0))


def verdict_line(run: RunRecords) -> str:
    """One line answering "is the encoder getting better?" from the latest eval against its random-init twin and
    the last embedding std (a collapse outranks any score)."""
    _, std = run.metrics.series("embedding_std")
    if len(std) and run.embedding_dim and std[-1] < 0.1 / math.sqrt(run.embedding_dim):
        return (
            f"**Verdict: collapsing** (last embedding std {std[-1]:.4f}, healthy ~ "
            f"{1 / math.sqrt(run.embedding_dim):.4f}): see train.lr, train.tau and the augmentations."
        )
    scored = [e for e in run.evals if is_number(e.get("random_knn_top1"))]
    if not scored:
        return "**Verdict: not judged**: no eval against a random-init twin was recorded (train.probe_data, or `eval`)."
    latest = max(scored, key=_recency)
    gain = latest["knn_top1"] - latest["random_knn_top1"]
    where = f"version {latest['version']}" if isinstance(latest.get("version"), int) else "the latest state"
    on = f" on {latest['data']}" if latest.get("data") else ""
    best = max(scored, key=lambda e: e["knn_top1"])
    falling = ""
    if best["knn_top1"] - latest["knn_top1"] > run.warn_knn_drop:  # the live health warning's threshold
        at = f"version {best['version']}" if isinstance(best.get("version"), int) else f"step {best.get('step')}"
        falling = f" But it is falling: {at} scored {best['knn_top1']:.3f}."
    if gain > 0:
        return (
            f"**Verdict: better than random init**: {where} scores kNN {latest['knn_top1']:.3f}{on}, "
            f"{gain:+.3f} over its random-init twin ({latest['random_knn_top1']:.3f}).{falling}"
        )
    return (
        f"**Verdict: not better than random init yet**: {where} scores kNN {latest['knn_top1']:.3f}{on}, "
        f"{gain:+.3f} against its random-init twin ({latest['random_knn_top1']:.3f}); young encoders usually "
        "need a few hundred steps (benchmarks/RESULTS.md)."
    )


def _best_eval_line(evals: list[dict[str, Any]]) -> str:
    """The best eval and, when it is another one, the latest: is the encoder getting better than its random init?"""
    if not evals:
        return "- best eval: none recorded"
    best = max(evals, key=lambda e: e["knn_top1"])
    text = f"- best eval: {_eval_text(best)}"
    latest = max(evals, key=_recency)
    if latest is not best:
        text += f"; latest: {_eval_text(latest)}"
    return text


def _eval_text(e: dict[str, Any]) -> str:
    """ "version 3 (step 600), kNN top-1 0.412, linear top-1 0.503 (random init: kNN 0.314, linear 0.401) on digits"."""
    where = f"version {e['version']}" if isinstance(e.get("version"), int) else "no version"
    if is_number(e.get("step")):
        where = (
            f"{where} (step {e['step']})" if isinstance(e.get("version"), int) else f"step {e['step']} (not exported)"
        )
    text = f"{where}, kNN top-1 {e['knn_top1']:.3f}"
    if is_number(e.get("linear_top1")):
        text += f", linear top-1 {e['linear_top1']:.3f}"
    if is_number(e.get("random_knn_top1")):
        text += f" (random init: kNN {e['random_knn_top1']:.3f}"
        if is_number(e.get("random_linear_top1")):
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
    hint = (
        ""
        if run.probe_data
        else " (for your cameras' scenes, replace digits with a folder of labelled images, one subfolder per class)"
    )
    return f"- score the latest export (kNN and linear vs random init): `{shlex.join(words)}`{hint}"


def _runtime_line(run: RunRecords) -> str:
    if not run.runtime:
        return (
            f"- runtime: not recorded (no {RUNTIME_HISTORY}; `byol-agent run` starts a runtime consumer that writes it)"
        )
    last = run.runtime[-1]
    latency = [r for r in run.runtime if r.p50_ms is not None]
    swaps = sum(1 for r in run.runtime if r.event == "swap")
    served = [r.version for r in run.runtime if r.event in ("serve", "swap")]  # versions that served a call
    text = f"- runtime: last served version {served[-1] if served else '?'}, {swaps} swap(s) between calls"
    if last.version is not None and served and last.version != served[-1]:
        text += f" (version {last.version} loaded after the last call)"
    calls = runtime_calls(run)
    if calls is not None:
        _, failures = continued_counts(run, run.runtime, "failures")
        text += f", {calls} calls, {int(failures[-1]) if len(failures) else 0} failed"
    if latency:
        last_p99 = latency[-1].p99_ms
        p99 = last_p99 if last_p99 is not None else math.nan
        worst = max((r.p99_ms for r in latency if r.p99_ms is not None), default=math.nan)
        text += f"; latency p50 {latency[-1].p50_ms:.2f} ms, p99 {p99:.2f} ms (last window), worst p99 {worst:.2f} ms"
    return text
