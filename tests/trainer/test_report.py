"""Report on a realistic metrics.jsonl: PNGs that hold pictures, a summary that names the numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from agent.cli import main as cli_main
from trainer.report import RunDirError, append_event, read_metrics, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_run(run: Path, steps: int = 300, with_eval: bool = True) -> None:
    """What a continual trainer writes: metric lines every 10 steps, exports, a refusal, evals, a torn last line."""
    rng = np.random.default_rng(0)
    lines = []
    t0 = 1_700_000_000.0
    for step in range(0, steps + 1, 10):
        lines.append({
            "step": step, "loss": 3.5 * math.exp(-step / 150) + 0.3 + 0.05 * rng.standard_normal(),
            "embedding_std": 0.044 - 0.01 * step / steps, "lr": 3e-4, "tau": 0.99,
            "img_per_s": 28.0 + rng.standard_normal(), "frames_in": 15 * step, "frames_dropped": step // 50,
            "buffer_fill": min(1.0, step / 200), "time": t0 + 2.0 * step,
        })
        if step and step % 100 == 0:
            lines.append({"event": "export", "step": step, "version": step // 100, "time": t0 + 2.0 * step})
    lines.append({"event": "export_refused", "step": 305, "reason": "collapse: embedding std 0.004 < 0.02"})
    lines.insert(0, {"event": "start", "step": 0, "resumed_from": None})
    lines.insert(12, {"event": "start", "step": 100, "resumed_from": "ckpt-000100.pt"})
    lines.append({"event": "restore", "from_step": 290, "step": 200, "restores": 1})
    if with_eval:
        for version, knn in ((1, 0.61), (2, 0.74), (3, 0.70)):
            lines.append({"event": "eval", "version": version, "knn_top1": knn, "linear_top1": knn + 0.1,
                          "random_knn_top1": 0.55, "random_linear_top1": 0.66, "data": "digits"})
    text = "\n".join(json.dumps(row) for row in lines) + '\n{"step": 310, "loss": 0.'  # crash mid-write
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text(text)


def test_report_writes_pngs_and_summary_with_the_numbers(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _write_run(run)
    report = write_report(run)

    names = sorted(p.name for p in report.plots)
    assert names == ["buffer_fill.png", "embedding_std.png", "eval.png", "loss.png", "throughput.png"]
    for path in report.plots:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, path
    assert report.missing == []
    summary = report.summary.read_text()
    metrics = read_metrics(run)
    last = metrics.train[-1]
    assert metrics.bad_lines == 1
    assert "steps: 0 to 300" in summary
    assert "wall time: 600.0 s" in summary
    assert f"last loss: {last['loss']:.4f}" in summary
    assert "3 published (versions 1 to 3), 1 refused (1x collapse" in summary
    assert "best eval: version 2, kNN top-1 0.740, linear top-1 0.840 (random init: kNN 0.550, linear 0.660)" in summary
    assert "skipped 1 unreadable line" in summary
    assert "trainer starts: 2 (resumed 1), restores after non-finite losses: 1" in summary


def test_report_plots_what_exists_and_names_the_rest(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": s, "loss": 2.0 - s / 100} for s in range(0, 50, 5)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = write_report(run, tmp_path / "out")
    assert [p.name for p in report.plots] == ["loss.png"]
    assert report.missing == ["embedding_std", "img_per_s", "buffer_fill", "eval events"]
    summary = report.summary.read_text()
    assert "0 published" in summary and "none recorded" in summary
    assert "not recorded, so not plotted: embedding_std, img_per_s, buffer_fill, eval events" in summary


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
