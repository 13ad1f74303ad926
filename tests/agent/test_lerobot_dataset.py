"""LeRobot datasets as sources (agent/robot/lerobot_dataset.py), on datasets written here in both layouts.

Real files: videos encoded by PyAV (AV1 by libsvtav1, LeRobot's default, and H.264 by libx264: this PyAV 18.1
has libx264 and no libopenh264), a v3.0
episodes parquet written by pyarrow (tests/agent/lerobot_writer.py). Two cameras, two episodes of
different lengths, 64x48 frames; decoded frames are matched to the source images within codec tolerance.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agent.core.config import CaptureConfig
from agent.core.errors import SourceError
from agent.robot.lerobot_dataset import (
    EPISODE_GAP_S,
    is_lerobot_dataset,
    lerobot_camera_specs,
    open_lerobot,
)
from agent.robot.source_base import SourceExhausted
from agent.robot.source_reader import SourceReader
from tests.agent.lerobot_writer import V30_VIDEO_PATH, write_dataset

FPS = 10
LENGTHS = (5, 4)
CODECS = {"observation.images.top": "libsvtav1", "observation.images.wrist": "libx264"}
TOLERANCE = 10.0  # mean |difference| per pixel; frames differ from each other by >= 40


def _image(camera: int, episode: int, frame: int) -> np.ndarray:
    """A smooth 48x64 RGB image unique to (camera, episode, frame): a gradient and a disc that moves."""
    y, x = np.mgrid[0:48, 0:64].astype(np.float32)
    base = 40.0 * frame + 110.0 * episode + 60.0 * camera
    img = np.stack([(base + 2 * x) % 256, (base * 0.5 + 3 * y) % 256, np.full_like(x, (120 + 70 * camera) % 256)], -1)
    disc = (x - 10 - 8 * frame) ** 2 + (y - 24) ** 2 < 64
    img[disc] = (255 - 60 * episode, 40, 200)
    return img.astype(np.uint8)


SOURCE = {key: [[_image(c, e, f) for f in range(n)] for e, n in enumerate(LENGTHS)] for c, key in enumerate(CODECS)}


@pytest.fixture(scope="module", params=["v2.1", "v3.0"])
def dataset(request, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp(request.param.replace(".", "")) / "so100_pick"
    return write_dataset(root, request.param, SOURCE, CODECS, fps=FPS)


def _read_all(source) -> list[tuple[np.ndarray, float]]:
    out = []
    with source:
        while True:
            try:
                image = source.read()
            except SourceExhausted:
                return out
            out.append((image, source.media_time_s))


def _which(image: np.ndarray, key: str) -> tuple[int, int, float]:
    """(episode, frame, mean |diff|) of the source image of camera `key` closest to `image`."""
    diffs = [
        (np.abs(image.astype(np.float32) - ref.astype(np.float32)).mean(), e, f)
        for e, ep in enumerate(SOURCE[key])
        for f, ref in enumerate(ep)
    ]
    diff, e, f = min(diffs)
    return e, f, diff


def test_a_dataset_expands_into_one_camera_per_video_key(dataset: Path) -> None:
    assert is_lerobot_dataset(str(dataset)) and is_lerobot_dataset(f"{dataset}#observation.images.top")
    assert not is_lerobot_dataset(str(dataset / "meta"))
    specs = lerobot_camera_specs(str(dataset))
    assert specs == [f"{dataset}#{key}" for key in CODECS]
    assert lerobot_camera_specs(specs[1]) == [specs[1]]
    with pytest.raises(SourceError, match="no camera key 'observation.images.side'.*observation.images.top"):
        lerobot_camera_specs(f"{dataset}#observation.images.side")
    with pytest.raises(SourceError, match="has 2 cameras; choose one"):
        open_lerobot(str(dataset), CaptureConfig())


@pytest.mark.parametrize("key", list(CODECS))
def test_every_frame_of_every_episode_in_order_with_episode_aware_times(dataset: Path, key: str) -> None:
    source = open_lerobot(f"{dataset}#{key}", CaptureConfig())
    assert source.name == f"LeRobot dataset '{dataset}' camera {key!r}" and source.finite
    frames = _read_all(source)
    assert source.frame_count == sum(LENGTHS) and len(frames) == sum(LENGTHS)
    expected = [(e, f) for e, n in enumerate(LENGTHS) for f in range(n)]
    for (image, t), (e, f) in zip(frames, expected):
        assert image.shape == (48, 64, 3) and image.dtype == np.uint8
        got_e, got_f, diff = _which(image, key)
        assert (got_e, got_f) == (e, f) and diff < TOLERANCE, (key, e, f, got_e, got_f, diff)
        assert t == pytest.approx(e * EPISODE_GAP_S + f / FPS, abs=1e-3)
    assert source.errors == 0 and source.skipped == 0


def test_v3_episodes_spread_over_several_files(tmp_path: Path) -> None:
    """LeRobot starts a new video file past its size limit: episode 1 in file-001, each file starting at 0 s."""
    root = write_dataset(tmp_path / "split", "v3.0", SOURCE, CODECS, fps=FPS, file_per_episode=True)
    for key in CODECS:
        source = open_lerobot(f"{root}#{key}", CaptureConfig())
        source.start_at(3)
        frames = _read_all(source)
        expected = [(e, f) for e, n in enumerate(LENGTHS) for f in range(n)][3:]
        assert [_which(image, key)[:2] for image, _ in frames] == expected
        assert [round(t, 3) for _, t in frames] == [round(e * EPISODE_GAP_S + f / FPS, 3) for e, f in expected]
        assert source.errors == 0


@pytest.mark.parametrize("skip", [2, 5, 7, 9, 12])
def test_start_at_continues_after_the_frames_already_delivered(dataset: Path, skip: int) -> None:
    key = "observation.images.top"
    source = open_lerobot(f"{dataset}#{key}", CaptureConfig())
    source.start_at(skip)
    frames = _read_all(source)
    expected = [(e, f) for e, n in enumerate(LENGTHS) for f in range(n)][skip:]  # past the end: none, no error
    assert [_which(image, key)[:2] for image, _ in frames] == expected
    assert [round(t, 3) for _, t in frames] == [round(e * EPISODE_GAP_S + f / FPS, 3) for e, f in expected]


def test_a_reopen_resumes_where_it_was_and_loop_restarts(dataset: Path) -> None:
    key = "observation.images.wrist"
    source = open_lerobot(f"{dataset}#{key}", CaptureConfig(loop_video=True))
    assert not source.finite
    source.connect()
    got = [_which(source.read(), key)[:2] for _ in range(3)]
    source.disconnect()
    source.connect()  # as capture reopens a lost source
    got += [_which(source.read(), key)[:2] for _ in range(sum(LENGTHS) - 3 + 2)]
    source.disconnect()
    expected = [(e, f) for e, n in enumerate(LENGTHS) for f in range(n)]
    assert got == expected + expected[:2]


def test_a_truncated_video_gives_the_frames_before_the_damage_and_a_counted_error(
    dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import shutil

    copy = shutil.copytree(dataset, tmp_path / "damaged")
    info = json.loads((copy / "meta" / "info.json").read_text())
    key = "observation.images.top"
    if info["codebase_version"] == "v3.0":
        video = copy / V30_VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0)
    else:
        video = copy / "videos" / "chunk-000" / key / "episode_000000.mp4"
    data = video.read_bytes()
    video.write_bytes(data[: int(len(data) * 0.6)])  # the robot lost power while the file was written
    source = open_lerobot(f"{copy}#{key}", CaptureConfig())
    with caplog.at_level(logging.WARNING):
        frames = _read_all(source)
    got = [_which(image, key) for image, _ in frames]
    expected = [(e, f) for e, n in enumerate(LENGTHS) for f in range(n)]
    assert 0 < len(got) < len(expected)
    # what comes out is in order, each frame the right one, and none invented
    assert [g[:2] for g in got] == [x for x in expected if x in [g[:2] for g in got]]
    assert all(g[2] < TOLERANCE for g in got)
    assert source.errors == 1 and str(video) in caplog.text
    if info["codebase_version"] == "v2.1":  # moov at the end: episode 0 is lost, episode 1 still plays
        assert [g[:2] for g in got] == expected[LENGTHS[0] :]
    else:  # one file, index at the front: the frames before the cut, then nothing
        assert [g[:2] for g in got] == expected[: len(got)]


def test_a_damaged_packet_is_skipped_and_counted_and_the_frames_after_it_play(dataset: Path, tmp_path: Path) -> None:
    import shutil

    import av

    copy = shutil.copytree(dataset, tmp_path / "damaged")
    key = "observation.images.top"
    video = next(p for p in sorted((copy / "videos").rglob("*.mp4")) if key in str(p))  # holds episode 0
    with av.open(str(video)) as container:
        packets = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]
    pos, size = packets[3]  # frame 3 of episode 0: its AV1 data overwritten with noise
    data = bytearray(video.read_bytes())
    data[pos + 2 : pos + size] = np.random.default_rng(0).integers(0, 256, size - 2, dtype=np.uint8).tobytes()
    video.write_bytes(bytes(data))
    source = open_lerobot(f"{copy}#{key}", CaptureConfig())
    got = [_which(image, key)[:2] for image, _ in _read_all(source)]
    assert source.skipped == 1 and source.errors == 1  # the packet, and the file's shortfall
    expected = [(e, f) for e, n in enumerate(LENGTHS) for f in range(n)]
    assert got == [x for x in expected if x != (0, 3)]  # only the damaged frame is missing


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda info: "{not json", r"meta/info.json is not valid JSON"),
        (lambda info: {**info, "codebase_version": "v1.6"}, r"key 'codebase_version' is 'v1.6'"),
        (lambda info: {k: v for k, v in info.items() if k != "fps"}, r"key 'fps' is None"),
        (lambda info: {**info, "features": {"action": {"dtype": "float32"}}}, r"key 'features' has no camera"),
        (lambda info: {**info, "video_path": "videos/{camera}/x.mp4"}, r"key 'video_path'"),
    ],
    ids=["garbled", "version", "fps", "no-camera", "template"],
)
def test_a_bad_info_json_is_one_line_naming_the_file_and_key(dataset: Path, tmp_path: Path, edit, match) -> None:
    import shutil

    copy = shutil.copytree(dataset, tmp_path / "bad")
    info_path = copy / "meta" / "info.json"
    new = edit(json.loads(info_path.read_text()))
    info_path.write_text(new if isinstance(new, str) else json.dumps(new))
    with pytest.raises(SourceError, match=match) as caught:
        source = open_lerobot(f"{copy}#observation.images.top", CaptureConfig())
        source.connect()
    assert "\n" not in str(caught.value) and str(info_path) in str(caught.value)


def test_realtime_pacing_does_not_wait_through_the_gap_between_episodes(dataset: Path) -> None:
    """The episode gap (EPISODE_GAP_S) is a pause in the recording: the pacer restarts its clock there."""
    source = open_lerobot(f"{dataset}#observation.images.top", CaptureConfig())
    halt, wake = threading.Event(), threading.Event()
    reader = SourceReader(
        source, CaptureConfig(height=48, width=64), pace="realtime", wake=wake, halt=halt, lossless=True
    )
    reader.start()
    got, deadline = [], time.monotonic() + 30  # the clip lasts 0.9 s; without the fix the gap is 11 days
    try:
        while len(got) < sum(LENGTHS) and time.monotonic() < deadline:
            grab = reader.read_latest()
            if grab is None:
                wake.wait(0.05)
                wake.clear()
                continue
            got.append(grab)
    finally:
        halt.set()
        reader.join(10)
    assert len(got) == sum(LENGTHS)


def test_bad_episode_metadata_is_one_line_naming_the_file(dataset: Path, tmp_path: Path) -> None:
    import shutil

    copy = shutil.copytree(dataset, tmp_path / "bad")
    if (copy / "meta" / "episodes.jsonl").exists():  # v2.1: a torn last line (power lost while appending) is skipped
        path = copy / "meta" / "episodes.jsonl"
        path.write_text(path.read_text() + '{"episode_index": 2, "len')
        assert len(_read_all(open_lerobot(f"{copy}#observation.images.top", CaptureConfig()))) == sum(LENGTHS)
        path.write_text("")
        match = "episodes.jsonl lists no episodes"
    else:  # v3.0: an episodes parquet that is not one, or lacks the camera's columns
        path = copy / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
        path.write_bytes(b"PAR1 cut short")
        match = "file-000.parquet cannot be read for camera 'observation.images.top'"
    with pytest.raises(SourceError, match=match) as caught:
        open_lerobot(f"{copy}#observation.images.top", CaptureConfig()).connect()
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)
