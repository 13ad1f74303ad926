"""Online quality monitor: a real trainer scores its target encoder against random init while it trains."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from agent.core.config import EvalConfig, load_config
from agent.core.errors import ModelFileError, SourceError
from agent.supervisor import format_pipeline_status
from tests.conftest import free_tcp_endpoint
from tests.trainer.test_continual import records, run_trainer, tiny_config
from trainer.feature_probes import load_eval_data, random_init_encoder
from trainer.metrics import format_status
from trainer.quality_monitor import QualityMonitor
from trainer.report import write_report

TINY_CFG = load_config(None, ["model.encoder=tiny_cnn", "model.image_size=16", "model.stem=standard"])


def write_labelled(root: Path, per_class: int = 12) -> Path:
    """Two classes that differ in colour and texture (a train/ and a test/ half), as real files."""
    rng = np.random.default_rng(0)
    for half, n in (("train", per_class), ("test", per_class // 2)):
        for name, colour in (("red", (30, 30, 220)), ("green", (30, 220, 30))):
            folder = root / half / name
            folder.mkdir(parents=True)
            for i in range(n):
                image = np.clip(np.array(colour) + rng.normal(0, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
                cv2.imwrite(str(folder / f"{i}.png"), image)
    return root


def test_train_test_folder_uses_its_own_halves(tmp_path: Path) -> None:
    data = load_eval_data(write_labelled(tmp_path), 16, max_images=100)
    bank, queries = data.split
    assert (len(bank), len(queries)) == (24, 12) and data.classes == ["green", "red"]
    assert np.bincount(data.labels[queries]).tolist() == [6, 6]


@pytest.mark.slow
def test_trainer_logs_probe_scores_against_random_init(tmp_path: Path) -> None:
    probe = write_labelled(tmp_path / "probe")
    cfg = tiny_config(free_tcp_endpoint(), "train.max_steps=6", f"train.probe_data={probe}", "train.probe_every=3")
    trainer = run_trainer(cfg, tmp_path / "run")
    evals = [r for r in records(tmp_path / "run") if r.get("event") == "eval"]
    assert evals and {r["step"] for r in evals} <= {3, 6}
    for row in evals:
        assert row["n_train"] == 24 and row["n_test"] == 12 and row["num_classes"] == 2
        assert 0.0 <= row["knn_top1"] <= 1.0 and row["random_knn_top1"] is not None
    # the random-init reference is the run's own initial encoder: colour separates these classes
    assert evals[0]["random_knn_top1"] > 0.9
    status = json.loads((tmp_path / "run" / "status-trainer.json").read_text())
    assert status["probe_knn"] == evals[-1]["knn_top1"] and trainer.quality is not None
    assert f"kNN {evals[-1]['knn_top1']:.3f} (init {evals[-1]['random_knn_top1']:.3f}" in format_status(status)
    report = write_report(tmp_path / "run")
    assert any(p.name == "eval.png" for p in report.plots)


@pytest.mark.slow
def test_the_default_config_probes_each_checkpoint_and_the_final_state_on_digits(tmp_path: Path) -> None:
    # no probe setting at all: configs/default.yaml's train.probe_data (digits, bundled with scikit-learn)
    cfg = tiny_config(free_tcp_endpoint(), "train.max_steps=7", "train.checkpoint_every=3")
    assert cfg.train.probe_data == "digits" and cfg.train.probe_every is None
    trainer = run_trainer(cfg, tmp_path / "run")
    evals = [r for r in records(tmp_path / "run") if r.get("event") == "eval"]
    steps = [r["step"] for r in evals]
    # each checkpoint (3, 6) unless the previous probe still ran, and always the final state (7)
    assert steps[-1] == 7 and set(steps) <= {3, 6, 7} and len(steps) == len(set(steps)), steps
    assert all(r["data"] == "digits" and r["num_classes"] == 10 and r["random_knn_top1"] > 0.1 for r in evals)
    assert len({r["random_knn_top1"] for r in evals}) == 1  # one random-init twin, scored once
    status = json.loads((tmp_path / "run" / "status-trainer.json").read_text())
    assert status["probe_step"] == 7 and trainer.quality is not None
    line = format_pipeline_status({"trainer": status}, 1.0, {})
    assert f"kNN {evals[-1]['knn_top1']:.2f} (init {evals[-1]['random_knn_top1']:.2f})" in line, line


def test_a_missing_probe_folder_fails_at_start(tmp_path: Path) -> None:
    cfg = tiny_config(free_tcp_endpoint(), f"train.probe_data={tmp_path / 'nowhere'}")
    with pytest.raises(SourceError, match="does not exist"):
        run_trainer(cfg, tmp_path / "run")


class _NaNEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float("nan")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) * self.scale


def test_a_failure_in_the_scoring_thread_is_re_raised_by_poll(tmp_path: Path) -> None:
    monitor = QualityMonitor(str(write_labelled(tmp_path)), TINY_CFG.model, EvalConfig(), 0, (0.5,) * 3, (0.5,) * 3)
    assert monitor.submit(3, None, _NaNEncoder().eval())
    with pytest.raises(ModelFileError, match="non-finite"):
        monitor.close(30)
    assert monitor.poll() == []  # raised once, then cleared


def test_a_mono_run_is_scored_against_a_mono_twin(tmp_path: Path) -> None:
    # capture.channels=1: the learner's normalisation has one channel, so its random-init twin must take gray frames
    mono = random_init_encoder(TINY_CFG.model.model_dump(), 1, channels=1)
    monitor = QualityMonitor(str(write_labelled(tmp_path)), TINY_CFG.model, EvalConfig(), 0, (0.5,), (0.25,))
    assert monitor.submit(3, None, mono)
    (result,) = monitor.close(60)
    assert result.random_knn_top1 is not None and 0.0 <= result.knn_top1 <= 1.0
