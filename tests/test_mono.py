"""A mono camera end to end: `capture.channels: 1` is captured gray, carried gray on the
wire, trained by a 1-channel encoder, exported as a N x H x W x 1 graph and served from RGB camera frames."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from agent.core.frames import to_channels
from agent.core.wire import Frame, decode_frame, encode_frame
from agent.robot.runtime import HotEncoder
from tests.conftest import free_tcp_endpoint
from tests.test_finite_sources import FRAMES, _video
from tests.test_stream import CLI, TINY, status

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("jpeg", [None, 90])
def test_gray_frames_cross_the_wire(jpeg) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    gray = to_channels(rgb, 1)
    got = decode_frame(encode_frame(Frame(camera_id=2, seq=5, timestamp=1.0, image=gray), jpeg))
    assert got.image.shape == (24, 40, 1)
    assert np.abs(got.image.astype(int) - gray.astype(int)).max() <= (0 if jpeg is None else 12)


def test_a_mono_run_trains_exports_and_serves(tmp_path: Path) -> None:
    run = tmp_path / "run"
    ports = [f"wire.endpoint={free_tcp_endpoint()}", "wire.publish=null"]
    argv = [
        *CLI,
        "run",
        "--source",
        _video(tmp_path),
        "--run-dir",
        str(run),
        "--duration",
        "600",
        *TINY,
        *ports,
        "capture.channels=1",
        "capture.jpeg_quality=90",
        "capture.fps=30",
        "train.replay_ratio=2",
        "export.probe_gate=digits",
    ]  # the gate scores the bare temporary graph: it must read a gray input
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert status(run)["frames_in"] == FRAMES and status(run)["step"] == 2 * FRAMES
    manifest = json.loads((run / "exports" / (run / "exports" / "LATEST").read_text().strip()).read_text())
    assert manifest["input"]["channels"] == 1
    camera = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    with HotEncoder(run / "exports", providers="cpu", timeout_s=30) as encoder:
        out = encoder.embed(camera)
    assert out.shape == (1, manifest["output"]["dim"]) and np.isfinite(out).all()
    scored = subprocess.run(
        [*CLI, "eval", "--encoder", str(run / "exports"), "--data", "digits"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert scored.returncode == 0 and "Traceback" not in scored.stderr, scored.stderr[-2000:]
    assert "random" in scored.stdout.lower(), scored.stdout  # the random-init reference was built mono too
