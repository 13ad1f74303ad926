"""BackgroundExporter: off the caller's thread, newest-pending-only, refusals reported, bugs re-raised."""

from __future__ import annotations

import threading
import time
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


def _poll_until(exporter: BackgroundExporter, n: int, timeout_s: float = 60.0) -> list:
    """Events polled until `n` have come (or the time is up); the caller's thread runs on meanwhile."""
    events: list = []
    deadline = time.monotonic() + timeout_s
    while len(events) < n and time.monotonic() < deadline:
        events += exporter.poll()
        time.sleep(0.05)
    return events


def test_nothing_an_export_raises_ends_the_export_thread_or_the_caller(tmp_path: Path) -> None:
    exporter = BackgroundExporter(ExportConfig(), model_cfg(), tmp_path)
    exporter.submit(1, None, scene_frames(4))  # not a module: a programming error, logged and reported, not raised
    events = _poll_until(exporter, 1)
    exporter.submit(2, tiny_encoder(1), scene_frames(4))  # the thread is still there
    exporter.close(timeout_s=60)
    events += exporter.poll()
    assert [e["event"] for e in events] == ["export_failed", "export"], events
    assert events[0]["step"] == 1 and "AttributeError" in events[0]["reason"] and "\n" not in events[0]["reason"]


@pytest.mark.slow
def test_a_dynamo_export_shares_no_tracing_state_with_the_training_thread(tmp_path: Path) -> None:
    """torch's tracing state is process-global: while another thread of the process exports with dynamo,
    `torch.compiler.is_exporting()` is True on the training thread too, and `optimizer.zero_grad` enters
    fx's annotation bookkeeping, racing the export on one dict (`KeyError: 'custom'` ended training runs).
    Training here steps and zero-grads in a loop for the whole export, as the trainer's thread does."""
    exporter = BackgroundExporter(ExportConfig(exporter="dynamo"), model_cfg(), tmp_path)
    net = tiny_encoder(0).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
    x = torch.rand(4, 3, 16, 16)
    exporter.submit(1, tiny_encoder(1), scene_frames(8))
    events: list = []
    shared, errors, steps = 0, [], 0
    deadline = time.monotonic() + 180
    while not events and time.monotonic() < deadline:
        try:
            for _ in range(200):
                shared += torch.compiler.is_exporting()
                optimizer.zero_grad()
            net(x).sum().backward()
            optimizer.step()
            steps += 1
        except Exception as exc:  # what ended training runs before the fix
            errors.append(repr(exc))
        events += exporter.poll()
    exporter.close(timeout_s=120)
    events += exporter.poll()
    assert [e["event"] for e in events] == ["export"], events
    assert steps > 0 and errors == [] and shared == 0, (shared, errors[:3])
