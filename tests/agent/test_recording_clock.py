"""A recording's own clock is the frame's time on the wire: a video's container time, a log's header
stamps, not the moment capture read the frame (so temporal positives pair by recording time in `--pace asap`)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.core.config import CaptureConfig, WireConfig
from agent.core.wire import Frame
from agent.robot.transport import FrameReceiver
from tests.agent.robot_log_writers import T0_NS, smooth_image, write_mcap_ros2
from tests.agent.test_capture import CaptureThread


def receive(endpoint: str, capture: CaptureConfig, n: int) -> list:
    wire = WireConfig(endpoint=endpoint, publish=None, send_hwm=64)
    with FrameReceiver(endpoint, hwm=64) as receiver:
        with CaptureThread(capture, wire, lossless=True, pace="asap") as cap:
            frames = []
            while len(frames) < n:
                frame = receiver.recv(15)
                assert frame is not None, f"only {len(frames)} of {n} frames arrived"
                if isinstance(frame, Frame):  # not a camera's EndOfStream
                    frames.append(frame)
            if not capture.loop_video:
                cap.finish()
    return frames


def write_video(path: Path, n: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (32, 24))
    for i in range(n):
        writer.write(np.full((24, 32, 3), 8 * i, np.uint8))
    writer.release()


def test_asap_replay_of_a_video_stamps_frames_with_the_container_clock(tmp_path: Path, free_endpoint: str) -> None:
    path = tmp_path / "walk.avi"
    write_video(path, 30)  # 3 s of video
    frames = receive(free_endpoint, CaptureConfig(sources=[str(path)], height=24, width=32), 30)
    times = [f.timestamp for f in frames]
    assert times == pytest.approx([0.1 * i for i in range(30)], abs=1e-3)  # read within ~0.02 s, recorded over 2.9 s


def test_a_looping_video_keeps_its_clock_running_forward(tmp_path: Path, free_endpoint: str) -> None:
    path = tmp_path / "loop.avi"
    write_video(path, 3)
    frames = receive(free_endpoint, CaptureConfig(sources=[str(path)], height=24, width=32, fps=10, loop_video=True), 7)
    assert [f.timestamp for f in frames] == pytest.approx([0.1 * i for i in range(7)], abs=1e-3)  # 0.3 follows 0.2


def test_each_topic_of_a_log_is_its_own_camera_stamped_by_its_headers(tmp_path: Path, free_endpoint: str) -> None:
    path = tmp_path / "drive.mcap"
    write_mcap_ros2(
        path,
        {
            "/front": ("rgb8", [smooth_image(24, 32, s) for s in range(4)]),
            "/rear": ("jpeg", [smooth_image(24, 32, s) for s in range(4)]),
        },
        period_ns=50_000_000,
    )
    capture = CaptureConfig(sources=[str(path)], height=24, width=32, camera_id_base=7)
    frames = receive(free_endpoint, capture, 8)
    by_camera: dict[int, list[float]] = {}
    for frame in frames:
        by_camera.setdefault(frame.camera_id, []).append(frame.timestamp)
    assert sorted(by_camera) == [7, 8]  # /front then /rear, in topic order
    for times in by_camera.values():
        assert times == pytest.approx([(T0_NS + i * 50_000_000) / 1e9 for i in range(4)], abs=1e-6)
