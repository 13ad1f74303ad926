"""A falling online probe and a collapsing embedding are shown as warnings: status line, `run` line, TensorBoard."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from agent.core.config import Config
from agent.core.demo_scene import DemoScene
from agent.supervisor import format_pipeline_status
from tests.conftest import free_tcp_endpoint
from tests.trainer.test_continual import records, tiny_config
from tests.trainer.test_quality_monitor import write_labelled
from trainer.continual import ContinualTrainer
from trainer.health import HealthWatch
from trainer.metrics import MetricsWriter, format_status
from trainer.run_monitor import RunMonitor
from trainer.sinks.tensorboard import TENSORBOARD_DIR


class Noise(nn.Module):
    """An encoder whose features say nothing about the image (seeded noise): its kNN is at chance."""

    def __init__(self) -> None:
        super().__init__()
        self.generator = torch.Generator().manual_seed(0)
        self.scale = nn.Parameter(torch.ones(()))  # the monitor reads its device from a parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.randn(x.shape[0], 16, generator=self.generator)


def wait_idle(trainer: ContinualTrainer, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while trainer.quality is not None and trainer.quality.busy and time.monotonic() < deadline:
        time.sleep(0.05)


def _fall_and_collapse(cfg: Config, run_dir: Path) -> tuple[Path, str]:
    """A trainer's monitor sees a probe at kNN ~1, then one at chance, then a batch whose views coincide; returns
    the run directory and what the live line printed."""
    trainer = ContinualTrainer(cfg, run_dir, open_receiver=lambda: None)  # not run: the test steps it
    live = io.StringIO()
    monitor = RunMonitor(
        MetricsWriter(run_dir, stream=live, sinks=["jsonl", "tensorboard"]),
        cfg.train,
        train_step=trainer.train_step,
        buffer=trainer.buffer,
        state=trainer.state,
        quality=trainer.quality,
    )
    scene = DemoScene(32, 32, seed=1)
    real = torch.from_numpy(np.stack([scene.render(i / 15) for i in range(8)]))
    black = torch.zeros_like(real)  # every view of a black frame is black: the projections coincide, std -> 0
    try:
        monitor.stepped(trainer.train_step(real))
        monitor.probe(None, lambda: trainer.learner.encoder_module("target"), final=True)  # colour: kNN ~1
        wait_idle(trainer)
        monitor.maybe_probe(None, Noise)  # logs the finished probe (no train.probe_every: submits nothing)
        monitor.stepped(trainer.train_step(real))
        monitor.probe(None, Noise, final=True)  # chance
        wait_idle(trainer)
        monitor.maybe_probe(None, Noise)
        monitor.stepped(trainer.train_step(black))
        monitor.status("training", force=True)
    finally:
        monitor.close()
    return run_dir, live.getvalue()


def test_a_falling_probe_and_a_collapsing_embedding_are_warnings_on_every_display(tmp_path: Path) -> None:
    probe = write_labelled(tmp_path / "probe")
    cfg = tiny_config(free_tcp_endpoint(), f"train.probe_data={probe}", "eval.max_images=100")
    run_dir, live = _fall_and_collapse(cfg, tmp_path / "run")
    evals = [r["knn_top1"] for r in records(run_dir) if r.get("event") == "eval"]
    assert len(evals) == 2 and evals[0] > evals[1] + 0.02, evals
    health = {r["kind"]: r for r in records(run_dir) if r.get("event") == "health"}
    assert health.keys() == {"probe_falling", "embedding_collapsing"} and all(r["active"] for r in health.values())

    status = json.loads((run_dir / "status-trainer.json").read_text())
    assert len(status["warnings"]) == 2
    line = format_status(status)
    assert "WARNING probe falling: kNN" in line and "WARNING embedding collapsing: std" in line
    assert "WARNING probe falling" in live
    assert "WARNING embedding collapsing" in format_pipeline_status({"trainer": status}, 10.0, {})

    events = EventAccumulator(str(run_dir / TENSORBOARD_DIR), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    assert [e.value for e in events.Scalars("health/probe_falling")] == [1.0]
    assert [e.value for e in events.Scalars("health/embedding_collapsing")] == [1.0]
    notes = [t.string_val[0].decode() for e in events.Tensors("warnings/text_summary") for t in [e.tensor_proto]]
    assert any("probe falling" in n for n in notes) and any("embedding collapsing" in n for n in notes)


def test_the_thresholds_are_the_configs(tmp_path: Path) -> None:
    """train.warn_knn_drop / warn_std_fraction: a run whose probe is this noisy can say so (the same fall as
    above under a threshold it does not cross; a std of exactly 0 is below any fraction)."""
    probe = write_labelled(tmp_path / "probe")
    overrides = ["train.warn_knn_drop=0.99", "train.warn_std_fraction=0.001"]
    cfg = tiny_config(free_tcp_endpoint(), f"train.probe_data={probe}", "eval.max_images=100", *overrides)
    run_dir, live = _fall_and_collapse(cfg, tmp_path / "run")
    evals = [r["knn_top1"] for r in records(run_dir) if r.get("event") == "eval"]
    assert len(evals) == 2 and evals[0] > evals[1] + 0.02, evals
    health = {r["kind"]: r for r in records(run_dir) if r.get("event") == "health"}
    assert health.keys() == {"embedding_collapsing"}, health  # a fall of ~0.5 is under a 0.99 threshold
    assert "below 0.001x its peak" in health["embedding_collapsing"]["message"]  # views that coincide: std 0


def test_a_warning_starts_once_and_clears_when_the_figure_recovers() -> None:
    watch = HealthWatch(knn_drop=0.02, std_fraction=0.5)
    assert [watch.probe(s, k) for s, k in enumerate([0.40, 0.45, 0.44])] == [None, None, None]  # 0.01 below: fine
    started = watch.probe(3, 0.42)
    assert started is not None and started["active"] and started["reference"] == 0.45
    assert watch.probe(4, 0.41) is None and watch.warnings() == ["probe falling: kNN 0.410, 0.040 below its best 0.450"]
    cleared = watch.probe(5, 0.44)
    assert cleared is not None and not cleared["active"] and watch.warnings() == []
    assert [watch.embedding(s, v) for s, v in enumerate([0.05, 0.06, 0.031])] == [None, None, None]
    assert (watch.embedding(3, 0.029) or {}).get("kind") == "embedding_collapsing"
    assert watch.embedding(4, float("nan")) is None and len(watch.warnings()) == 1
