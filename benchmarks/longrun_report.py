"""bench_longrun.py's reading of a run: the training clock, the kNN and embedding-std summary against the goal
of issue 26, and the markdown table and plot made of it. See bench_longrun.py's docstring.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainer.run_records import RunMetrics  # noqa: E402

GAP_S = 300.0  # a longer silence between two training lines is a stop, not training time
WARMUP_S = 20 * 60.0  # the goal is checked after the first 20 minutes of training (issue 26)
KNN_DROP = 0.02  # largest allowed fall below the running best kNN (issue 26)
STD_FRACTION = 0.5  # collapse: windowed median embedding std below this fraction of its own peak


# --------------------------------------------------------------------------- reading the run


def training_clock(times: np.ndarray) -> np.ndarray:
    """Seconds of training at each training line (wall-clock `times`, s): cumulative gaps, long gaps dropped."""
    if len(times) == 0:
        return times
    gaps = np.diff(times, prepend=times[0])
    gaps[(gaps < 0) | (gaps > GAP_S)] = 0.0
    return np.cumsum(gaps)


def summarise(run: RunMetrics, collapse_std_min: float) -> dict[str, Any]:
    """Per-probe rows and the verdict; keys: rows, trained_s, steps, knn_ok, std_ok, worst_drop, ..."""
    train = [
        r for r in run.train if isinstance(r.get("time"), (int, float)) and isinstance(r.get("step"), (int, float))
    ]
    times = np.asarray([float(r["time"]) for r in train])
    steps = np.asarray([float(r["step"]) for r in train])
    clock = training_clock(times)
    std_x, std_y = run.series("embedding_std")
    loss_x, loss_y = run.series("loss")

    def window(xs: np.ndarray, ys: np.ndarray, lo: float, hi: float) -> float:
        sel = (xs > lo) & (xs <= hi)
        return float(np.median(ys[sel])) if sel.any() else float("nan")

    rows: list[dict[str, Any]] = []
    best, prev_step = -math.inf, 0.0
    probes = [e for e in run.of("eval") if isinstance(e.get("knn_top1"), (int, float))]
    probes.sort(key=lambda e: (float(e.get("step") or 0), float(e.get("time") or 0)))
    for e in probes:
        step = float(e.get("step") or 0)
        t = float(np.interp(step, steps, clock)) if len(steps) else 0.0
        best = max(best, float(e["knn_top1"]))
        rows.append(
            {
                "step": int(step),
                "minutes": t / 60.0,
                "knn": float(e["knn_top1"]),
                "best": best,
                "linear": e.get("linear_top1"),
                "random_knn": e.get("random_knn_top1"),
                "std": window(std_x, std_y, prev_step, step),
                "loss": window(loss_x, loss_y, prev_step, step),
            }
        )
        prev_step = step
    late = [r for r in rows if r["minutes"] * 60.0 >= WARMUP_S]
    drops = [r["best"] - r["knn"] for r in late]
    worst_drop = max(drops) if drops else float("nan")
    stds = [r["std"] for r in rows if math.isfinite(r["std"])]
    late_std = [r["std"] for r in late if math.isfinite(r["std"])]
    peak_std = max(stds) if stds else float("nan")
    late_x = steps[clock >= WARMUP_S] if len(steps) else steps
    min_std_late = (
        float(np.min(std_y[std_x >= late_x[0]])) if len(late_x) and (std_x >= late_x[0]).any() else float("nan")
    )
    std_ok = bool(late_std) and min_std_late >= collapse_std_min and min(late_std) >= STD_FRACTION * peak_std
    return {
        "rows": rows,
        "trained_s": float(clock[-1]) if len(clock) else 0.0,
        "steps": int(steps[-1]) if len(steps) else 0,
        "worst_drop": worst_drop,
        "knn_ok": bool(late) and worst_drop <= KNN_DROP,
        "std_ok": std_ok,
        "peak_std": peak_std,
        "min_std_late": min_std_late,
        "min_window_std_late": min(late_std) if late_std else float("nan"),
        "collapse_std_min": collapse_std_min,
        "bad_lines": run.bad_lines,
        "late_probes": len(late),
        "std_series": (std_x, std_y),
        "warnings": replay_warnings(run, probes),
        "loss_series": (loss_x, loss_y),
    }


def replay_warnings(run: RunMetrics, probes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The health records (trainer/health.py) of this run: as written by its trainer, or, for a trainer that
    predates them, what the trainer's HealthWatch makes of the same probes and metrics windows in step order."""
    written = run.of("health")
    if written:
        return written
    from trainer.health import HealthWatch

    watch, out = HealthWatch(KNN_DROP, STD_FRACTION), []  # the goal's thresholds, which the live warnings share
    updates = [(float(e.get("step") or 0), 1, "probe", e["knn_top1"]) for e in probes]
    updates += [(float(r["step"]), 0, "embedding", r.get("embedding_std")) for r in run.train if "step" in r]
    for step, _, kind, value in sorted(updates, key=lambda u: (u[0], u[1])):
        record = watch.probe(int(step), value) if kind == "probe" else watch.embedding(int(step), value)
        if record is not None:
            out.append(record)
    return out


def fmt(value: Any, spec: str = ".3f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def verdict(s: dict[str, Any], ok: bool, yes: str, no: str) -> str:
    return (yes if ok else no) if s["late_probes"] else f"not checked yet (no probe after {WARMUP_S / 60:.0f} min)"


def markdown(s: dict[str, Any], run_dir: Path) -> str:
    lines = [
        f"Run `{run_dir}`: {s['steps']} steps, {s['trained_s'] / 60:.1f} min of training, "
        f"{len(s['rows'])} probes ({s['late_probes']} after the first {WARMUP_S / 60:.0f} min); "
        f"{s['bad_lines']} unreadable metrics lines; trainer CPU {fmt(s.get('trainer_cpu_s'), '.0f')} s "
        "(sampled every 15 s).",
        "",
        "| step | train min | kNN | running best | best − kNN | linear | random-init kNN | emb std (median) "
        "| loss (median) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in s["rows"]:
        lines.append(
            f"| {r['step']} | {r['minutes']:.1f} | {fmt(r['knn'])} | {fmt(r['best'])} | {fmt(r['best'] - r['knn'])} | "
            f"{fmt(r['linear'])} | {fmt(r['random_knn'])} | {fmt(r['std'], '.4f')} | {fmt(r['loss'], '.4f')} |"
        )
    lines += [
        "",
        f"- kNN: worst fall below the running best after {WARMUP_S / 60:.0f} min = {fmt(s['worst_drop'])} "
        f"(goal ≤ {KNN_DROP}): **{verdict(s, s['knn_ok'], 'met', 'NOT met')}**",
        f"- collapse: lowest embedding std after {WARMUP_S / 60:.0f} min = {fmt(s['min_std_late'], '.4f')} "
        f"(export gate {s['collapse_std_min']:g}); lowest windowed median {fmt(s['min_window_std_late'], '.4f')} "
        f"vs peak {fmt(s['peak_std'], '.4f')} (goal ≥ {STD_FRACTION}× peak): "
        f"**{verdict(s, s['std_ok'], 'no collapse', 'COLLAPSE')}**",
    ]
    warns = s["warnings"]
    lines.append(f"- warnings (trainer/health.py) over the run: {len(warns)}" + ("" if warns else " (none)"))
    lines += [f"  - step {w.get('step')}: {w.get('message')}" for w in warns[:20]]
    return "\n".join(lines) + "\n"


def plot(s: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    rows = s["rows"]
    xs = [r["step"] for r in rows]
    ax = axes[0]
    ax.plot(xs, [r["knn"] for r in rows], "o-", ms=3, label="kNN (test photos)")
    ax.plot(xs, [r["best"] for r in rows], "-", color="tab:green", lw=1, label="running best")
    ax.plot(xs, [r["best"] - KNN_DROP for r in rows], "--", color="tab:red", lw=1, label=f"running best − {KNN_DROP}")
    rnd = [r["random_knn"] for r in rows if isinstance(r["random_knn"], (int, float))]
    if rnd:
        ax.axhline(rnd[-1], color="gray", ls=":", label="random init")
    late = [r["step"] for r in rows if r["minutes"] * 60.0 >= WARMUP_S]
    for a in axes:
        if late:
            a.axvline(late[0], color="gray", lw=0.8)
    ax.set_ylabel("kNN top-1")
    ax.legend(fontsize=7, loc="lower right")
    for a, (key, label) in zip(axes[1:], (("std_series", "embedding std"), ("loss_series", "BYOL loss"))):
        x, y = s[key]
        a.plot(x, y, lw=0.6, alpha=0.5)
        if len(y) >= 50:
            k = 50
            a.plot(x[k - 1 :], np.convolve(y, np.ones(k) / k, mode="valid"), lw=1.2)
        a.set_ylabel(label)
    axes[1].axhline(s["collapse_std_min"], color="tab:red", ls="--", lw=1)
    axes[-1].set_xlabel("step")
    fig.suptitle(f"Long run: {s['steps']} steps, {s['trained_s'] / 60:.0f} min of training", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
