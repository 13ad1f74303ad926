"""The probe gate publishes an encoder only if its frozen features do not get worse on labelled data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from agent.core.config import ExportConfig
from agent.core.errors import ExportRefused
from export.exporter import export_encoder
from export.manifest import read_latest
from export.publish import Publisher
from tests.export.tiny import model_cfg, publish_version, scene_frames


class ColourStats(nn.Module):
    """A deliberately poor encoder: per-channel mean and spread only (no spatial information)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


def _manifest(export_dir: Path) -> dict:
    return json.loads((export_dir / read_latest(export_dir)).read_text())


def test_gate_records_the_score_and_refuses_a_regression(tmp_path: Path) -> None:
    version = publish_version(tmp_path, seed=1, step=10, probe_gate="digits")
    published = _manifest(tmp_path)["eval"]
    assert published["data"] == "digits" and published["knn_top1"] > 0.5

    cfg = ExportConfig(keep=50, probe_gate="digits")
    with pytest.raises(ExportRefused, match="probe on digits regressed"):
        export_encoder(
            20,
            ColourStats(),
            scene_frames(12),
            export_cfg=cfg,
            model_cfg=model_cfg(),
            publisher=Publisher(tmp_path, 50),
        )
    assert _manifest(tmp_path)["version"] == version, "the refused encoder must not be published"


def test_gate_off_publishes_without_scoring(tmp_path: Path) -> None:
    publish_version(tmp_path, seed=1)
    assert "eval" not in _manifest(tmp_path)


def test_the_gate_scores_with_the_users_eval_section(tmp_path: Path) -> None:
    """The gate ignored `eval` (k, split, image cap) and always used the built-in defaults."""
    from agent.core.config import EvalConfig
    from export.manifest import read_latest, read_manifest
    from export.publish import Publisher
    from tests.export.tiny import tiny_encoder

    export_encoder(
        10,
        tiny_encoder(1),
        scene_frames(12),
        export_cfg=ExportConfig(probe_gate="digits"),
        model_cfg=model_cfg(),
        publisher=Publisher(tmp_path, 5),
        eval_cfg=EvalConfig(k=3, test_fraction=0.5),
    )
    row = read_manifest(tmp_path / read_latest(tmp_path)).raw["eval"]
    assert row["k"] == 3 and row["n_test"] > 800  # defaults: k 20, 539 of the 1797 digits held out


def test_changed_eval_settings_start_a_new_baseline_instead_of_refusing_forever(tmp_path: Path) -> None:
    """Review find: a published score made with other eval settings is not comparable; it raised, every time."""
    from agent.core.config import EvalConfig
    from export.publish import Publisher
    from tests.export.tiny import tiny_encoder

    publish_version(tmp_path, seed=1, step=10, probe_gate="digits")  # scored with the default eval section
    version = export_encoder(
        20,
        tiny_encoder(2),
        scene_frames(12),
        export_cfg=ExportConfig(keep=50, probe_gate="digits"),
        model_cfg=model_cfg(),
        publisher=Publisher(tmp_path, 50),
        eval_cfg=EvalConfig(k=3),
    )
    assert version == 2
