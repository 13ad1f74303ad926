"""Real-input path faults: names with ':' and '[ ]' open as the files they are; symlinked folders
inside a folder source are followed once, loops never."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.core.config import CaptureConfig
from agent.robot.source_base import SourceExhausted
from agent.robot.sources import open_source

CFG = CaptureConfig(height=32, width=32)


def write_video(path: Path, n: int = 5) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (32, 24))
    assert writer.isOpened()
    for i in range(n):
        writer.write(np.full((24, 32, 3), 40 * i, np.uint8))
    writer.release()


def write_image(path: Path, level: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((8, 8, 3), level, np.uint8))


def read_all(source) -> list[np.ndarray]:
    out = []
    with source:
        while True:
            try:
                out.append(source.read())
            except SourceExhausted:
                return out


def levels(frames: list[np.ndarray]) -> list[int]:
    return [int(f[0, 0, 0]) for f in frames]


def test_an_iso_timestamp_name_given_as_a_relative_path_opens_as_the_video_it_is(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_video(tmp_path / "2024-01-05T10:30:00.avi")
    assert len(read_all(open_source("2024-01-05T10:30:00.avi", CFG))) == 5  # FFmpeg took "2024-01-05T10" for a protocol


def test_existing_names_with_brackets_are_the_file_and_folder_they_name(tmp_path: Path) -> None:
    write_video(tmp_path / "drive[1].avi")
    assert len(read_all(open_source(str(tmp_path / "drive[1].avi"), CFG))) == 5
    write_image(tmp_path / "run[3]" / "a.png", 50)
    write_image(tmp_path / "run3" / "b.png", 90)  # what the glob "run[3]" would match instead
    assert levels(read_all(open_source(str(tmp_path / "run[3]"), CFG))) == [50]


def test_a_symlinked_camera_folder_inside_a_folder_source_is_read(tmp_path: Path) -> None:
    write_image(tmp_path / "root" / "front" / "a.png", 10)
    write_image(tmp_path / "elsewhere" / "rear" / "b.png", 20)
    os.symlink(tmp_path / "elsewhere" / "rear", tmp_path / "root" / "rear")
    os.symlink(tmp_path / "root" / "front", tmp_path / "root" / "front-again")  # the same folder twice: read once
    assert sorted(levels(read_all(open_source(str(tmp_path / "root"), CFG)))) == [10, 20]


@pytest.mark.parametrize("how", ["folder", "glob"])
def test_a_symlink_loop_delivers_each_image_once(tmp_path: Path, how: str) -> None:
    write_image(tmp_path / "root" / "cam" / "a.png", 10)
    write_image(tmp_path / "root" / "cam" / "b.png", 20)
    os.symlink(tmp_path / "root", tmp_path / "root" / "cam" / "loop")
    spec = str(tmp_path / "root") if how == "folder" else str(tmp_path / "root" / "**" / "*.png")
    assert sorted(levels(read_all(open_source(spec, CFG)))) == [10, 20]
