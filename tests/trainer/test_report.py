"""Report on a realistic metrics.jsonl: PNGs that hold pictures, a summary that names the numbers."""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from agent.cli import main as cli_main
from tests.conftest import REPO, TINY_MODEL, free_tcp_endpoint
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


# --------------------------------------------------------------------------- a real run

REAL_RUN = [
    *TINY_MODEL,
    "train.metrics_every=2",
    "train.checkpoint_every=3",  # the run's exporter publishes each checkpoint
    "buffer.min_fill=16",
    "buffer.capacity_frames=256",
    "capture.height=40",
    "capture.width=40",
    "capture.fps=30",
    "run.status_every_s=0.5",
    "runtime.poll_interval_s=0.2",
]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short real `byol-agent run`, stopped with Ctrl-C once the runtime has served a frame."""
    run = tmp_path_factory.mktemp("real") / "run"
    ports = [f"wire.endpoint={free_tcp_endpoint()}", f"wire.publish={free_tcp_endpoint()}"]
    argv = [sys.executable, "-m", "agent.cli", "run", "--run-dir", str(run), "--duration", "300", *REAL_RUN, *ports]
    log_path = run.parent / "run.log"
    proc = subprocess.Popen(argv, cwd=REPO, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    try:
        while not (
            any(r.get("p50_ms") is not None for r in _records(run / "runtime.jsonl"))
            and max((r.get("step", 0) for r in _records(run / "metrics.jsonl")), default=0) >= 7
        ):
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "timed out:\n" + log_path.read_text()[-3000:]
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=180) == 0, log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    return run


def _copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to, ignore=shutil.ignore_patterns("report", "checkpoints"))
    return to


@pytest.mark.slow
def test_a_real_run_counts_from_its_start_to_its_stop(real_run: Path, tmp_path: Path) -> None:
    run = _copy_run(real_run, tmp_path / "run")
    records = _records(run / "metrics.jsonl")
    stop = [r for r in records if r.get("event") == "stop"][-1]
    start = [r for r in records if r.get("event") == "start"][0]
    summary = write_report(run).summary.read_text()
    assert f"steps: {start['step']} to {stop['step']}" in summary, summary
    times = [r["time"] for r in records]
    assert f"wall time: {max(times) - min(times):.1f} s" in summary, summary


@pytest.mark.slow
def test_buffer_fill_is_a_percentage_as_in_the_status_line(real_run: Path, tmp_path: Path) -> None:
    run = _copy_run(real_run, tmp_path / "run")
    fill = [r["buffer_fill"] for r in _records(run / "metrics.jsonl") if "buffer_fill" in r]
    summary = write_report(run).summary.read_text()
    assert f"buffer fill: last {fill[-1]:.0%}" in summary, summary
    figures, _ = report_figures(run)
    ax = figures["buffer_fill"].axes[0]
    drawn = np.concatenate([line.get_ydata() for line in ax.lines])
    assert np.allclose(np.sort(drawn)[-1], 100 * max(fill)) and "%" in ax.get_ylabel()


@pytest.mark.slow
def test_the_suggested_eval_command_runs_and_lands_in_the_next_report(real_run: Path, tmp_path: Path) -> None:
    run = _copy_run(real_run, tmp_path / "run")
    summary = write_report(run).summary.read_text()
    commands = re.findall(r"`(byol-agent eval [^`]*)`", summary)
    assert commands, summary
    argv = shlex.split(commands[0])
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", *argv[1:]], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    evals = [r for r in _records(run / "metrics.jsonl") if r.get("event") == "eval"]
    online = [r for r in evals if r["encoder"].startswith("target at step")]  # the trainer's probe, on by default
    assert online and online[-1]["step"] == max(r["step"] for r in _records(run / "metrics.jsonl") if "step" in r)
    (scored,) = [r for r in evals if r not in online]
    assert scored["version"] >= 1 and scored["data"] == "digits"
    report = write_report(run)
    assert "eval.png" in [p.name for p in report.plots]
    summary = report.summary.read_text()
    line = next(line for line in summary.splitlines() if line.startswith("- best eval: "))
    assert f"version {scored['version']} (step {scored['step']}), kNN top-1 {scored['knn_top1']:.3f}" in line, line


@pytest.mark.slow
def test_the_overview_answers_learning_data_and_serving_on_a_wall_clock(real_run: Path, tmp_path: Path) -> None:
    run = _copy_run(real_run, tmp_path / "run")
    capture, runtime = _records(run / "capture.jsonl"), _records(run / "runtime.jsonl")
    assert capture and capture[-1]["skipped_novelty"] >= 0 and len(capture[-1]["frames_per_source"]) == 1
    assert runtime[0]["event"] == "serve" and any(r.get("p99_ms") is not None for r in runtime)
    report = write_report(run)
    assert "overview.png" in [p.name for p in report.plots]
    assert (run / "report" / "overview.png").read_bytes().startswith(PNG_MAGIC)
    figures, _ = report_figures(run)
    axes = {ax.get_title(): ax for ax in figures["overview"].axes if ax.get_title()}
    for title in ("Loss", "Embedding std", "Frames (capture)", "Runtime latency"):
        assert title in axes, sorted(axes)
        assert axes[title].get_xlabel() == "seconds since start"
    flow = {line.get_label() for line in axes["Frames (capture)"].lines}
    assert {"read", "novelty skipped", "sent", "dropped"} <= flow
    latency = {line.get_label(): line.get_ydata() for line in axes["Runtime latency"].lines}
    assert np.nanmax(latency["p99"]) == max(r["p99_ms"] for r in runtime if r.get("p99_ms") is not None)


@pytest.mark.slow
def test_embedding_std_is_drawn_against_healthy_and_collapsed_references(real_run: Path, tmp_path: Path) -> None:
    run = _copy_run(real_run, tmp_path / "run")
    figures, _ = report_figures(run)
    ax = figures["embedding_std"].axes[0]
    levels = {round(float(line.get_ydata()[0]), 6) for line in ax.lines if len(set(line.get_ydata())) == 1}
    assert {0.0, round(1 / math.sqrt(32), 6)} <= levels  # model.projection_size=32 in REAL_RUN
    assert ax.get_ylim()[0] <= 0


@pytest.mark.slow
def test_hundreds_of_versions_stay_readable(real_run: Path, tmp_path: Path) -> None:
    run = _copy_run(real_run, tmp_path / "run")
    records = _records(run / "metrics.jsonl")
    exports = [r for r in records if r.get("event") == "export"]
    export = exports[0]
    train = [r for r in records if "loss" in r and "event" not in r]
    t0, t1 = train[0]["time"], train[-1]["time"]
    with open(run / "metrics.jsonl", "a") as fh:
        for v in range(1, 301):
            t = t0 + (t1 - t0) * v / 300
            fh.write(json.dumps({**export, "version": v, "step": train[-1]["step"] * v // 300, "time": t}) + "\n")
            fh.write(
                json.dumps(
                    {
                        "event": "eval",
                        "time": t,
                        "version": v,
                        "step": v,
                        "knn_top1": 0.3 + v / 1000,
                        "random_knn_top1": 0.3,
                    }
                )
                + "\n"
            )
    figures, _ = report_figures(run)
    for stem, fig in figures.items():
        for ax in fig.axes:
            artists = len(ax.lines) + len(ax.collections) + len(ax.patches)
            assert artists <= 12, f"{stem}: {ax.get_title()!r} has {artists} artists"
            assert len(ax.get_xticklabels()) <= 20, f"{stem}: {ax.get_title()!r} has {len(ax.get_xticklabels())} ticks"
    summary = write_report(run).summary.read_text()
    assert f"{len(exports) + 300} published (versions 1 to 300)" in summary


@pytest.mark.slow
def test_the_final_step_comes_from_the_stop_event(tmp_path: Path) -> None:
    # a real ContinualTrainer: training lines every 3 steps (3, 6), stopped at max_steps 7
    from tests.trainer.test_continual import run_trainer, tiny_config

    run_trainer(tiny_config(free_tcp_endpoint(), "train.max_steps=7", "train.metrics_every=3"), tmp_path / "run")
    records = _records(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r and "event" not in r] == [3, 6]
    assert [r["step"] for r in records if r.get("event") == "stop"] == [7]
    summary = write_report(tmp_path / "run").summary.read_text()
    assert "steps: 0 to 7 (2 metric lines)" in summary, summary


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
