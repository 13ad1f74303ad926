"""Report on a real short `byol-agent run` (and a real ContinualTrainer): counts, units, suggested commands."""

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

from tests.conftest import REPO, TINY_MODEL, free_tcp_endpoint
from trainer.report import write_report
from trainer.report_figures import report_figures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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
