"""Metrics: JSON lines survive NaN, the status file is rewritten whole, the live line is throttled."""

from __future__ import annotations

import io
import json

from trainer.metrics import MetricsWriter


def test_metrics_lines_status_file_and_live_line(tmp_path):
    now = [0.0]
    out = io.StringIO()
    writer = MetricsWriter(tmp_path, status_every_s=1.0, live_every_s=10.0, stream=out, clock=lambda: now[0])
    writer.log({"step": 1, "loss": float("nan")})
    writer.log({"step": 2, "loss": 1.5})
    writer.status({"step": 2, "loss": 1.5, "frames_in": 40, "buffer_fill": 0.5})
    now[0] = 0.5
    writer.status({"step": 3, "loss": 1.4})  # too soon: neither file nor line changes
    status = json.loads((tmp_path / "status-trainer.json").read_text())
    assert status["step"] == 2 and status["frames_in"] == 40
    now[0] = 1.2
    writer.status({"step": 4, "loss": 1.3})
    assert json.loads((tmp_path / "status-trainer.json").read_text())["step"] == 4
    writer.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2] and lines[0]["loss"] is None and lines[1]["loss"] == 1.5
    live = out.getvalue().splitlines()
    assert len(live) == 1 and "step 2" in live[0] and "buffer 50%" in live[0]


def test_status_rate_is_averaged_over_a_window_and_falls_to_zero_while_waiting() -> None:
    from trainer.run_monitor import StepRate

    now = [0.0]
    rate = StepRate(window_s=10.0, min_span_s=1.0, clock=lambda: now[0])
    seen = []
    for t in range(0, 21):  # 2 steps/s for 20 s, sampled every second
        now[0] = float(t)
        seen.append(rate.update(2 * t))
    assert seen[0] is None and all(abs(r - 2.0) < 1e-9 for r in seen[1:])  # never "-" once it has a span
    for t in range(21, 40):  # training waits: the step stays at 40
        now[0] = float(t)
        last = rate.update(40)
    assert last == 0.0
