"""BackgroundExporter: off the caller's thread, newest-pending-only, refusals reported, bugs re-raised."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from agent.core.config import ExportConfig
from export.exporter import BackgroundExporter
from export.manifest import read_latest, read_manifest
from tests.export.tiny import model_cfg, scene_frames, tiny_encoder

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class _Gated(nn.Module):
    """Blocks in its first forward until released, so the test controls when the export thread is busy."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_encoder(11)
        self.entered = threading.Event()
        self.release = threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        assert self.release.wait(30), "test never released the gate"
        return self.net(x)


def test_submit_returns_at_once_and_only_the_newest_pending_export_runs(tmp_path: Path) -> None:
    exporter = BackgroundExporter(ExportConfig(), model_cfg(), tmp_path)
    gated = _Gated()
    exporter.submit(100, gated, scene_frames(8))
    assert gated.entered.wait(30)  # the export is running, on another thread, while we carry on here
    exporter.submit(200, tiny_encoder(12), scene_frames(8))
    exporter.submit(300, tiny_encoder(13), scene_frames(8))  # supersedes 200 before it started
    assert exporter.poll() == []
    gated.release.set()
    exporter.close(timeout_s=60)
    assert exporter.poll() == [
        {"event": "export", "step": 100, "version": 1},
        {"event": "export", "step": 300, "version": 2},
    ]
    assert read_manifest(tmp_path / "encoder-000002.json").step == 300


def test_refusal_is_reported_and_the_last_good_version_stays(tmp_path: Path) -> None:
    exporter = BackgroundExporter(ExportConfig(collapse_std_min=0.5), model_cfg(), tmp_path)
    exporter.submit(1, tiny_encoder(1), scene_frames(8))
    exporter.close(timeout_s=60)
    (event,) = exporter.poll()
    assert event["event"] == "export_refused" and event["step"] == 1
    assert "collapsed encoder" in event["reason"] and "collapse_std_min 0.5" in event["reason"]
    assert read_latest(tmp_path) is None

    good = BackgroundExporter(ExportConfig(), model_cfg(), tmp_path)
    good.submit(2, tiny_encoder(2), scene_frames(8))
    good.close(timeout_s=60)
    again = BackgroundExporter(ExportConfig(collapse_std_min=0.5), model_cfg(), tmp_path)
    again.submit(3, tiny_encoder(3), scene_frames(8))
    again.close(timeout_s=60)
    assert [e["event"] for e in good.poll() + again.poll()] == ["export", "export_refused"]
    assert read_latest(tmp_path) == "encoder-000001.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "encoder-000001.json", "encoder-000001.onnx"]


def test_a_bug_in_the_export_thread_is_re_raised_to_the_caller(tmp_path: Path) -> None:
    exporter = BackgroundExporter(ExportConfig(), model_cfg(), tmp_path)
    exporter.submit(1, None, scene_frames(4))  # not a module: a programming error, not a refusal
    with pytest.raises(RuntimeError, match="export thread failed"):
        exporter.close(timeout_s=30)
    with pytest.raises(RuntimeError, match="export thread failed"):
        exporter.submit(2, tiny_encoder(1), scene_frames(4))
