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
from tests.conftest import free_tcp_endpoint
from tests.trainer.test_continual import records, run_trainer, tiny_config
from trainer.evaluation import load_eval_data
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
    assert f"kNN {evals[-1]['knn_top1']:.3f} (random" in format_status(status)
    report = write_report(tmp_path / "run")
    assert any(p.name == "eval.png" for p in report.plots)


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
