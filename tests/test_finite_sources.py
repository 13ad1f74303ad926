"""A finite source (a video file, an image folder) loses nothing and ends the trainer's wait.

With the trainer started after capture, a 250-frame clip delivered 87 frames
(the rest dropped while the trainer was starting) and the trainer waited forever below min_fill.
Real processes, a video written with OpenCV, images written as PNG files.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.core.demo_scene import DemoScene
from tests.conftest import free_tcp_endpoint
from tests.test_stream import CLI, TINY, start, status

pytestmark = pytest.mark.slow

FRAMES = 60


def _frames() -> list[np.ndarray]:
    scene = DemoScene(48, 64, seed=3)
    return [cv2.cvtColor(scene.render(0.2 * i), cv2.COLOR_RGB2BGR) for i in range(FRAMES)]


def _video(folder: Path) -> str:
    path = folder / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (64, 48))
    for frame in _frames():
        writer.write(frame)
    writer.release()
    return str(path)


def _images(folder: Path) -> str:
    images = folder / "images"
    images.mkdir()
    for i, frame in enumerate(_frames()):
        assert cv2.imwrite(str(images / f"{i:03d}.png"), frame)
    return str(images)


@pytest.mark.parametrize("make_source", [_video, _images], ids=["video", "folder"])
def test_a_finite_source_is_delivered_whole_and_its_end_lets_the_trainer_finish(tmp_path: Path, make_source) -> None:
    source, ep, run = make_source(tmp_path), free_tcp_endpoint(), tmp_path / "run"
    capture = start(
        [*CLI, "capture", "--source", source, "--endpoint", ep, "--publish", "none", "--fps", "30", *TINY],
        tmp_path / "capture.log",
    )
    procs = [capture]
    try:
        time.sleep(3.0)  # the trainer comes up late, as it does when torch loads on a robot
        # min_fill above the clip's length: only the end-of-stream message can start (and end) training
        trainer = start(
            [
                *CLI,
                "train",
                "--endpoint",
                ep,
                "--run-dir",
                str(run),
                *TINY,
                "buffer.min_fill=128",
                "train.replay_ratio=2",
            ],
            tmp_path / "trainer.log",
        )
        procs.append(trainer)
        assert trainer.wait(180) == 0, (tmp_path / "trainer.log").read_text()[-2000:]
        assert capture.wait(60) == 0, (tmp_path / "capture.log").read_text()[-2000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    final = status(run)
    assert final["frames_in"] == FRAMES and final["frames_dropped"] == 0
    assert final["step"] == 2 * FRAMES  # replay_ratio updates per frame, on what it held
    capture_log = (tmp_path / "capture.log").read_text()
    assert f"sent={FRAMES} dropped=0" in capture_log and "told the trainer" in capture_log
    assert "every camera's source has ended" in (tmp_path / "trainer.log").read_text()


def test_run_on_a_recording_ends_when_the_trainer_has_used_it(tmp_path: Path) -> None:
    import subprocess

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
        "capture.fps=30",
        "buffer.min_fill=128",
        "train.replay_ratio=2",
    ]
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "trainer has finished" in proc.stderr and time.monotonic() - started < 400
    assert status(run)["frames_in"] == FRAMES and status(run)["step"] == 2 * FRAMES
    assert (run / "exports" / "LATEST").exists()  # the exporter published the final checkpoint on the way out
    import json

    final_capture = json.loads((run / "status-capture.json").read_text())  # what the last status line shows
    assert (final_capture["frames_read"], final_capture["kept"], final_capture["sent"]) == (FRAMES, FRAMES, FRAMES)


def test_a_run_that_trained_on_nothing_says_so_and_fails(tmp_path: Path) -> None:
    import subprocess

    run = tmp_path / "run"
    ports = [f"wire.endpoint={free_tcp_endpoint()}", "wire.publish=null"]
    argv = [
        *CLI,
        "run",
        "--source",
        "demo",
        "--run-dir",
        str(run),
        "--duration",
        "12",
        *TINY,
        *ports,
        "buffer.capacity_frames=4096",
        "buffer.min_fill=4000",
    ]  # never reached in 12 s
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("byol-agent run: trained on nothing") and "buffer.min_fill" in last
