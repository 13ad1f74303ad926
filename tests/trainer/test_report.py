"""Report on a realistic metrics.jsonl: PNGs that hold pictures, a summary that names the numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from agent.cli import main as cli_main
from trainer.report import write_report
from trainer.report_figures import report_figures
from trainer.run_records import RunDirError, append_event, read_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_run(run: Path, steps: int = 300, with_eval: bool = True) -> None:
    """What a continual trainer writes: metric lines every 10 steps, exports, a refusal, evals, a torn last line."""
    rng = np.random.default_rng(0)
    lines = []
    t0 = 1_700_000_000.0
    for step in range(0, steps + 1, 10):
        lines.append(
            {
                "step": step,
                "loss": 3.5 * math.exp(-step / 150) + 0.3 + 0.05 * rng.standard_normal(),
                "embedding_std": 0.044 - 0.01 * step / steps,
                "lr": 3e-4,
                "tau": 0.99,
                "img_per_s": 28.0 + rng.standard_normal(),
                "frames_in": 15 * step,
                "frames_dropped": step // 50,
                "buffer_fill": min(1.0, step / 200),
                "time": t0 + 2.0 * step,
            }
        )
        if step and step % 100 == 0:
            version = step // 100
            drift = (
                {}
                if version == 1
                else {"r2": 0.99, "cka_prev": 1.0 - 0.01 * version, "cka_pinned": {"1": 1.0 - 0.05 * version}}
            )
            lines.append({"event": "export", "step": step, "version": version, "time": t0 + 2.0 * step, **drift})
    lines.append({"event": "export_refused", "step": 305, "reason": "collapse: embedding std 0.004 < 0.02"})
    lines.insert(0, {"event": "start", "step": 0, "resumed_from": None})
    lines.insert(12, {"event": "start", "step": 100, "resumed_from": "ckpt-000100.pt"})
    lines.append({"event": "restore", "from_step": 290, "step": 200, "restores": 1})
    if with_eval:
        for version, knn in ((1, 0.61), (2, 0.74), (3, 0.70)):
            lines.append(
                {
                    "event": "eval",
                    "version": version,
                    "knn_top1": knn,
                    "linear_top1": knn + 0.1,
                    "random_knn_top1": 0.55,
                    "random_linear_top1": 0.66,
                    "data": "digits",
                }
            )
    text = "\n".join(json.dumps(row) for row in lines) + '\n{"step": 310, "loss": 0.'  # crash mid-write
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text(text)


def test_report_writes_pngs_and_summary_with_the_numbers(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _write_run(run)
    report = write_report(run)

    names = sorted(p.name for p in report.plots)
    assert names == [
        "buffer_fill.png",
        "drift.png",
        "embedding_std.png",
        "eval.png",
        "loss.png",
        "overview.png",
        "throughput.png",
    ]
    for path in report.plots:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, path
    assert report.missing == ["capture.jsonl", "runtime.jsonl"]
    summary = report.summary.read_text()
    metrics = read_metrics(run)
    last = metrics.train[-1]
    assert metrics.bad_lines == 1
    assert "steps: 0 to 300" in summary
    assert "wall time: 600.0 s" in summary
    assert f"last loss: {last['loss']:.4f}" in summary
    assert "3 published (versions 1 to 3), 1 refused (1x collapse" in summary
    assert "lowest CKA to the previous version 0.970 (version 3); version 3 to pinned version 1: CKA 0.850" in summary
    drift = report_figures(run)[0]["drift"].axes[0]
    assert sorted(line.get_label() for line in drift.get_lines()) == [
        "CKA to pinned version 1",
        "CKA to previous version",
        "R² of the map to previous",
    ]
    assert "best eval: version 2, kNN top-1 0.740, linear top-1 0.840 (random init: kNN 0.550, linear 0.660)" in summary
    assert "skipped 1 unreadable line" in summary
    assert "trainer starts: 2 (resumed 1), restores after non-finite losses: 1" in summary
    assert summary.splitlines()[2].startswith("**Verdict: better than random init**: version "), summary


@pytest.mark.slow  # three reports with every figure
def test_the_summary_opens_with_a_one_line_verdict(tmp_path: Path) -> None:
    """The reviewer's summary.md gave the scores but no answer; the verdict comes from the latest scored eval and a
    collapse outranks any score."""
    run = tmp_path / "run"
    run.mkdir()

    def verdict(rows: list[dict]) -> str:
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return write_report(run, tmp_path / "out").summary.read_text().splitlines()[2]

    train = [{"step": s, "loss": 1.0, "embedding_std": 0.2} for s in range(0, 50, 10)]
    probe = {"event": "eval", "step": 40, "version": 2, "knn_top1": 0.30, "random_knn_top1": 0.35, "data": "digits"}
    assert verdict(train).startswith("**Verdict: not judged**")
    assert verdict([*train, probe]) == (
        "**Verdict: not better than random init yet**: version 2 scores kNN 0.300 on digits, -0.050 against its "
        "random-init twin (0.350); young encoders usually need a few hundred steps (benchmarks/RESULTS.md)."
    )
    assert verdict([*train, {**probe, "knn_top1": 0.45}]).startswith(
        "**Verdict: better than random init**: version 2 scores kNN 0.450 on digits, +0.100 over"
    )
    earlier = {**probe, "step": 20, "version": 1, "knn_top1": 0.50}  # the reviewer's run: best v1, latest lower
    assert verdict([*train, earlier, {**probe, "knn_top1": 0.45}]).endswith(
        "+0.100 over its random-init twin (0.350). But it is falling: version 1 scored 0.500."
    )
    (run / "config.yaml").write_text("train:\n  warn_knn_drop: 0.1\n")  # the run's own threshold: 0.05 is not a fall
    assert verdict([*train, earlier, {**probe, "knn_top1": 0.45}]).endswith("+0.100 over its random-init twin (0.350).")
    (run / "config.yaml").unlink()
    runtime = [
        {"time": 1.0, "event": "serve", "version": 1, "previous": None, "swaps": 0},
        {"time": 2.0, "event": "swap", "version": 2, "previous": 1, "swaps": 1},
        {"time": 3.0, "version": 3, "swaps": 2, "calls": 40, "failures": 0, "window_calls": 0},
    ]
    (run / "runtime.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runtime))
    summary = write_report(run, tmp_path / "out").summary.read_text()
    assert "- runtime: last served version 2, 1 swap(s) between calls (version 3 loaded after the last call)" in summary


def test_report_plots_what_exists_and_names_the_rest(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": s, "loss": 2.0 - s / 100} for s in range(0, 50, 5)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = write_report(run, tmp_path / "out")
    assert [p.name for p in report.plots] == ["overview.png", "loss.png"]
    assert report.missing == [
        "embedding_std",
        "img_per_s",
        "buffer_fill",
        "eval events",
        "drift (export events with cka_prev)",
        "capture.jsonl",
        "runtime.jsonl",
    ]
    summary = report.summary.read_text()
    assert "0 published" in summary and "none recorded" in summary and "holds no published export" in summary
    assert "not recorded, so not plotted: embedding_std, img_per_s, buffer_fill, eval events, drift" in summary


def test_append_event_round_trips(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _write_run(run, steps=50, with_eval=False)
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text().rsplit("\n", 1)[0] + "\n")
    append_event(run, {"event": "eval", "version": 7, "knn_top1": 0.5})
    assert read_metrics(run).of("eval") == [{"event": "eval", "version": 7, "knn_top1": 0.5}]


def test_missing_run_dir_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="does not exist"):
        write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="holds no metrics.jsonl"):
        write_report(tmp_path / "empty")


def test_report_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    _write_run(run)
    assert cli_main(["report", str(run)]) == 0
    assert (run / "report" / "summary.md").is_file() and str(run / "report" / "loss.png") in capsys.readouterr().out
    assert cli_main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


# --------------------------------------------------------------------------- a short run, resumed once


def _write_resumed_run(run: Path, lines: int = 30) -> None:
    """What a first `run` of a few minutes writes when it is resumed once: training lines every 10 steps, one
    export (version 1, step 100), the trainer's online probe of that step (no version: the exporter is another
    process), capture.jsonl counting from 0 again in the second session, and a runtime that made no call."""
    t0 = 1_700_000_000.0
    rows: list[dict] = [{"event": "start", "step": 0, "resumed_from": None, "time": t0}]
    for i in range(1, lines + 1):
        rows.append(
            {
                "step": 10 * i,
                "loss": 2.0 - i / lines,
                "embedding_std": 0.05,
                "img_per_s": 30.0,
                "frames_in": 40 * i,
                "buffer_fill": 0.5,
                "time": t0 + 5.0 * i,
            }
        )
        if i == lines // 2:
            rows.append({"event": "start", "step": 10 * i, "resumed_from": "ckpt", "time": t0 + 5.0 * i + 1})
    rows.append({"event": "export", "step": 100, "version": 1, "time": t0 + 52.0})
    rows.append(
        {
            "event": "eval",
            "encoder": "target at step 100",
            "version": None,
            "step": 100,
            "data": "digits",
            "knn_top1": 0.81,
            "linear_top1": 0.93,
            "random_knn_top1": 0.72,
            "random_linear_top1": 0.92,
            "time": t0 + 53.0,
        }
    )
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    capture = [(0, 0), (10, 100), (20, 200), (80, 0), (90, 50), (100, 120)]  # (s, frames): resumed at 80 s
    (run / "capture.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "time": t0 + t,
                    "frames_read": n,
                    "kept": n,
                    "skipped_novelty": 0,
                    "sent": n,
                    "dropped": 0,
                    "frames_per_source": [n],
                    "source_names": ["demo"],
                }
            )
            + "\n"
            for t, n in capture
        )
    )
    runtime = [
        {"time": t0 + 150.0, "event": "serve", "version": 1, "previous": None, "swaps": 0},
        {
            "time": t0 + 150.1,
            "version": 1,
            "swaps": 0,
            "calls": 0,
            "failures": 0,
            "window_calls": 0,
            "p50_ms": None,
            "p99_ms": None,
        },
    ]
    (run / "runtime.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runtime))


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    """The figures and summary.md of `_write_resumed_run` (drawn once for the tests below)."""
    run = tmp_path_factory.mktemp("resumed") / "run"
    _write_resumed_run(run)
    return report_figures(run)[0], write_report(run).summary.read_text()


def test_a_resumed_runs_cumulative_counts_continue(resumed: tuple[dict, str]) -> None:
    figures, summary = resumed
    for fig, title in ((figures["frames"], "Frames (capture)"), (figures["overview"], "Frames (capture)")):
        ax = next(a for a in fig.axes if a.get_title() == title)
        read = next(line for line in ax.lines if line.get_label() == "read").get_ydata()
        assert np.all(np.diff(read) >= 0) and read[-1] == 320, read  # 200 before the resume, 120 after
    assert "read 320, kept 320" in summary, summary


def _integer_ticks(axis) -> list[float]:
    low, high = sorted(axis.get_view_interval())
    return [t for t in axis.get_majorticklocs() if low - 1e-9 <= t <= high + 1e-9]


def test_version_axes_tick_whole_versions_only(resumed: tuple[dict, str]) -> None:
    figures, _ = resumed
    checked = 0
    for stem, fig in figures.items():
        for ax in fig.axes:
            for axis, label in ((ax.xaxis, ax.get_xlabel()), (ax.yaxis, ax.get_ylabel())):
                if "version" in label:
                    ticks = _integer_ticks(axis)
                    assert ticks and all(float(t).is_integer() for t in ticks), f"{stem} {label!r}: {ticks}"
                    checked += 1
    assert checked >= 5  # loss (twin), eval, runtime, and the overview's three


def test_a_runtime_that_made_no_calls_is_said_so(resumed: tuple[dict, str]) -> None:
    figures, summary = resumed
    version, latency = figures["runtime"].axes
    assert "served" not in [line.get_label() for line in version.lines]
    assert any("no calls" in text.get_text() for text in version.texts + latency.texts)
    assert "0 calls" in summary


def test_the_running_mean_says_what_it_averages(tmp_path: Path) -> None:
    _write_resumed_run(tmp_path / "run", lines=44)
    figures, _ = report_figures(tmp_path / "run")
    labels = [line.get_label() for line in figures["loss"].axes[0].lines]
    # 44 records -> a window of 2 records of train.metrics_every (10) steps each
    assert "running mean of 2 records (~20 steps)" in labels, labels
    assert any("train.metrics_every" in label for label in labels), labels


def test_the_first_runs_probe_is_one_readable_point_per_version(resumed: tuple[dict, str]) -> None:
    figures, summary = resumed
    ax = figures["eval"].axes[0]
    knn = next(line for line in ax.lines if line.get_label() == "kNN top-1")
    assert list(knn.get_xdata()) == [1.0] and list(knn.get_ydata()) == [0.81]  # matched to version 1 by its step
    assert _integer_ticks(ax.xaxis) == [1.0]
    init = next(line for line in ax.lines if line.get_label().startswith("kNN, random init"))
    assert list(init.get_ydata()) == [0.72, 0.72] and list(init.get_xdata()) == [0, 1]  # a level line across
    assert (
        "best eval: version 1 (step 100), kNN top-1 0.810, linear top-1 0.930 "
        "(random init: kNN 0.720, linear 0.920) on digits"
    ) in summary, summary
