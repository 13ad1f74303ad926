"""Frame sources against real files: videos written with cv2.VideoWriter, image folders, globs, demo, PUB."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.core.config import CaptureConfig
from agent.core.errors import SourceError
from agent.core.wire import Frame
from agent.robot.sources import (
    CameraSource,
    DemoSource,
    ImageFilesSource,
    SourceExhausted,
    StreamSource,
    SubscriptionSource,
    VideoFileSource,
    open_source,
)
from agent.robot.transport import FrameSender
from tests.conftest import free_tcp_endpoint

CFG = CaptureConfig(height=32, width=32, fps=10)


def write_video(path: Path, n: int, fourcc: str = "MJPG", fps: float = 10.0, size=(64, 48)) -> list[np.ndarray]:
    """Write n flat-coloured RGB frames (colour encodes the index) and return them."""
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened()
    frames = []
    for i in range(n):
        rgb = np.zeros((h, w, 3), np.uint8)
        rgb[..., 0] = 20 * i
        rgb[..., 2] = 250 - 20 * i
        frames.append(rgb)
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return frames


def read_all(source) -> list[np.ndarray]:
    out = []
    with source:
        while True:
            try:
                out.append(source.read())
            except SourceExhausted:
                return out


@pytest.mark.parametrize("fourcc, suffix", [("MJPG", ".avi"), ("mp4v", ".mp4")])
def test_video_file_reads_back_every_frame_in_rgb(tmp_path: Path, fourcc: str, suffix: str) -> None:
    path = tmp_path / f"clip{suffix}"
    written = write_video(path, 6, fourcc)
    source = open_source(str(path), CFG)
    assert isinstance(source, VideoFileSource) and source.finite and not source.live
    times = []
    frames = []
    with source:
        for _ in range(6):
            frames.append(source.read())
            times.append(source.media_time_s)
        with pytest.raises(SourceExhausted):
            source.read()
    assert [f.shape for f in frames] == [(48, 64, 3)] * 6
    for got, want in zip(frames, written):
        assert np.abs(got.astype(int) - want).mean() < 8
    assert times == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5], abs=1e-3)


def test_looping_video_restarts(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    write_video(path, 3)
    source = open_source(str(path), CFG.model_copy(update={"loop_video": True}))
    assert not source.finite
    with source:
        reds = [int(source.read()[0, 0, 0]) for _ in range(7)]
    assert reds[3] == pytest.approx(reds[0], abs=6) and reds[6] == pytest.approx(reds[0], abs=6)
    assert reds[1] > reds[0] + 10


def test_unreadable_and_missing_videos_are_one_line_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "broken.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    cases = [(garbage, "cannot be decoded"), (empty, "cannot be decoded"), (tmp_path / "nope.mp4", "does not exist")]
    for path, reason in cases:
        with pytest.raises(SourceError, match=reason) as info:
            open_source(str(path), CFG).connect()
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def write_indexed_video(path: Path, n: int) -> None:
    """n flat grey frames of level 4 x the frame index (MJPG AVI, 10 fps, 32x24)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (32, 24))
    assert writer.isOpened()
    for i in range(n):
        writer.write(np.full((24, 32, 3), 4 * i, np.uint8))
    writer.release()


def damage_avi_chunk(path: Path, index: int) -> None:
    """Overwrite the payload of the index-th (0-based) '00dc' video chunk of the AVI's movi list with noise."""
    data = bytearray(path.read_bytes())
    at = data.index(b"movi")
    for _ in range(index + 1):
        at = data.index(b"00dc", at + 4)
    size = int.from_bytes(data[at + 4 : at + 8], "little")
    data[at + 8 : at + 8 + size] = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def test_a_damaged_frame_is_skipped_and_counted_and_reading_goes_on_to_the_end(tmp_path: Path, caplog) -> None:
    path = tmp_path / "clip.avi"
    write_indexed_video(path, 60)
    damage_avi_chunk(path, 29)  # the 30th frame
    source = open_source(str(path), CFG)
    with caplog.at_level("WARNING", logger="agent.robot.sources"):
        frames = read_all(source)
    indices = [round(float(f.mean()) / 4) for f in frames]
    assert indices == [i for i in range(60) if i != 29]
    assert source.skipped == 1
    assert "undecodable" in caplog.text and "reports" not in caplog.text


def test_max_bad_frames_bounds_the_failures_in_a_row(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    write_indexed_video(path, 60)
    damage_avi_chunk(path, 29)
    source = open_source(str(path), CFG.model_copy(update={"max_bad_frames": 0}))
    assert len(read_all(source)) == 29 and source.skipped == 0  # 0: the first failure ends the recording


def test_a_recording_that_ends_far_short_of_its_frame_count_says_so_once(tmp_path: Path, caplog) -> None:
    path = tmp_path / "clip.avi"
    write_indexed_video(path, 60)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header still says 60 frames
    with caplog.at_level("WARNING", logger="agent.robot.sources"):
        frames = read_all(open_source(str(path), CFG))
    assert 0 < len(frames) < 50
    short = [r.getMessage() for r in caplog.records if "reports 60" in r.getMessage()]
    assert len(short) == 1 and f"after {len(frames)} " in short[0], caplog.text


def _write_images(folder: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image = np.full((20, 30, 3), (10 * i, 0, 200), np.uint8)
        assert cv2.imwrite(str(path), image)


def test_folder_is_searched_recursively_in_sorted_order(tmp_path: Path) -> None:
    _write_images(tmp_path, ["b.png", "a.png", "sub/deeper/c.jpg", "sub/d.bmp"])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "corrupt.png").write_bytes(b"not really a png")
    source = open_source(str(tmp_path), CFG)
    assert isinstance(source, ImageFilesSource) and source.finite
    frames = read_all(source)
    assert len(frames) == 4 and source.skipped == 1
    assert all(f.shape == (20, 30, 3) for f in frames)
    assert frames[0][0, 0, 2] == 10  # a.png (i=1) first; BGR (10, 0, 200) read back as RGB


def test_glob_selects_matching_files(tmp_path: Path) -> None:
    _write_images(tmp_path, ["x1.png", "x2.png", "y.png", "sub/x3.png"])
    assert len(read_all(open_source(str(tmp_path / "x*.png"), CFG))) == 2
    assert len(read_all(open_source(str(tmp_path / "**" / "x*.png"), CFG))) == 3
    assert len(read_all(open_source(str(tmp_path / "y.png"), CFG))) == 1


def test_empty_folder_and_empty_glob_are_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="holds no images"):
        open_source(str(tmp_path), CFG).connect()
    with pytest.raises(SourceError, match="matches no files"):
        open_source(str(tmp_path / "*.png"), CFG).connect()


def test_demo_source_varies_and_is_deterministic() -> None:
    source = open_source("demo:3", CFG)
    assert isinstance(source, DemoSource) and not source.finite
    with source:
        frames = [source.read() for _ in range(20)]
    assert frames[0].shape == (32, 32, 3) and frames[0].dtype == np.uint8
    diffs = [np.abs(a.astype(int) - b).mean() for a, b in zip(frames, frames[1:])]
    assert min(diffs) > 0.1
    assert frames[0].std() > 20  # textured, not flat
    with open_source("demo:3", CFG) as again:
        np.testing.assert_array_equal(again.read(), frames[0])
    with open_source("demo:4", CFG) as other:
        assert np.abs(other.read().astype(int) - frames[0]).mean() > 5


def test_subscription_source_reads_another_captures_pub(free_endpoint: str) -> None:
    source = open_source("zmq+" + free_endpoint, CFG)
    assert isinstance(source, SubscriptionSource) and source.live
    image = np.full((12, 12, 3), 77, np.uint8)
    with FrameSender(free_tcp_endpoint(), hwm=2, publish=free_endpoint) as sender, source:
        source.timeout_s = 0.05
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            sender.send(Frame(0, 0, time.time(), image))
            try:
                got = source.read()
                break
            except SourceError:
                continue
        else:
            raise AssertionError("no frame arrived")
    np.testing.assert_array_equal(got, image)


def test_subscription_to_all_cameras_delivers_each_camera_in_turn(free_endpoint: str) -> None:
    source = open_source("zmq+" + free_endpoint, CFG)
    images = {cam: np.full((12, 12, 3), 40 * cam, np.uint8) for cam in (3, 4)}
    got: list[tuple[int, int]] = []
    with FrameSender(free_tcp_endpoint(), hwm=2, publish=free_endpoint) as sender, source:
        source.timeout_s = 0.05
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(got) < 20:
            for cam, image in images.items():  # back to back, as a capture's main loop sends its cameras
                sender.send(Frame(cam, 0, time.time(), image))
            time.sleep(0.02)  # both have arrived before the reader looks
            try:
                value = int(source.read()[0, 0, 0])
            except SourceError:
                continue
            got.append((value // 40, source.camera_id))
    cams = [cam for cam, _ in got]
    assert len(got) == 20 and min(cams.count(3), cams.count(4)) >= 8, got
    assert all(cam == camera_id for cam, camera_id in got)  # the camera id the frame was published with


def test_open_source_dispatch() -> None:
    assert isinstance(open_source("0", CFG), CameraSource)
    assert isinstance(open_source("/dev/video2", CFG), CameraSource)
    assert isinstance(open_source("rtsp://10.0.0.2/stream", CFG), StreamSource)
    assert isinstance(open_source("http://cam.local/mjpg", CFG), StreamSource)
    assert isinstance(open_source("recording.mkv", CFG), VideoFileSource)
    with pytest.raises(SourceError, match="empty source"):
        open_source("  ", CFG)


def test_missing_camera_is_one_line_error() -> None:
    with pytest.raises(SourceError, match="camera 63 cannot be opened") as info:
        open_source("63", CFG).connect()
    assert "\n" not in str(info.value)


def test_shuffled_folder_visits_every_image_once_per_pass_in_a_new_order(tmp_path: Path) -> None:
    _write_images(tmp_path, [f"c{i // 4}/{i:02d}.png" for i in range(12)])
    cfg = CFG.model_copy(update={"shuffle": True, "loop_video": True})
    source = open_source(str(tmp_path), cfg)
    source.connect()
    passes = [[int(source.read()[0, 0, 2]) for _ in range(12)] for _ in range(2)]
    assert sorted(passes[0]) == sorted(passes[1]) == [10 * i for i in range(12)]
    assert passes[0] != sorted(passes[0]) and passes[0] != passes[1]
    sorted_source = open_source(str(tmp_path), CFG.model_copy(update={"loop_video": True}))
    sorted_source.connect()
    assert [int(sorted_source.read()[0, 0, 2]) for _ in range(12)] == [10 * i for i in range(12)]


def test_a_folder_of_only_unreadable_images_is_an_error_not_an_empty_success(tmp_path: Path) -> None:
    import struct

    from agent.core.image_codecs import encode_jpeg

    (tmp_path / "a.jpg").write_bytes(b"not a jpeg at all")
    bomb = encode_jpeg(np.full((8, 8, 3), 90, np.uint8), 90)  # a JPEG that declares 40000x40000 pixels
    at = bomb.index(b"\xff\xc0")
    (tmp_path / "b.jpg").write_bytes(bomb[: at + 5] + struct.pack(">HH", 40000, 40000) + bomb[at + 9 :])
    source = open_source(str(tmp_path), CaptureConfig())
    with pytest.raises(SourceError, match="none of its 2 files could be read"):
        source.connect()  # at start-up, so capture fails with one line instead of sending nothing
    (tmp_path / "c.png").write_bytes(cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes())
    source = open_source(str(tmp_path), CaptureConfig())
    source.connect()
    assert source.read().shape == (4, 4, 3)  # one good file among bad ones is enough
    with pytest.raises(SourceExhausted):
        source.read()


def test_capture_bit_depth_scales_16_bit_images_of_a_folder(tmp_path: Path) -> None:
    ramp = np.linspace(0, 4095, 12 * 12).round().astype(np.uint16).reshape(12, 12)
    assert cv2.imwrite(str(tmp_path / "raw12.png"), np.dstack([ramp] * 3))  # 12-bit values, no sBIT
    auto = read_all(open_source(str(tmp_path), CFG))
    twelve = read_all(open_source(str(tmp_path), CaptureConfig(height=32, width=32, bit_depth=12)))
    assert auto[0].max() == 16  # the container's 16 bits (4095 x 255 / 65535): the documented default
    assert twelve[0].max() == 255 and twelve[0].dtype == np.uint8
    np.testing.assert_allclose(twelve[0][..., 0], np.round(ramp * (255 / 4095)), atol=1)
