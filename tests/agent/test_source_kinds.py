"""The contract every registered source kind keeps (agent/robot/sources.py, `KINDS`), one test over all of them:
its spec is recognised as that kind, it opens, reads uint8 HxWx3 frames, and ends exactly when it says it is finite.

Each kind needs a real instance here (`MAKERS`): a file written by the real writer, a loopback server or
publisher. A kind registered without one fails `test_every_registered_kind_has_a_real_instance_here`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import cv2
import numpy as np
import pytest

from agent.core.config import CaptureConfig
from agent.core.errors import SourceError
from agent.core.wire import Frame
from agent.robot.source_base import SourceExhausted
from agent.robot.sources import KINDS, SourceKind, expand_sources, kind_of, open_source
from agent.robot.transport import FrameSender
from tests.agent.lerobot_writer import write_dataset
from tests.agent.mjpeg_server import MjpegServer
from tests.agent.robot_log_writers import smooth_image, write_mcap_ros2
from tests.conftest import free_tcp_endpoint

CFG = CaptureConfig(height=16, width=16, read_timeout_s=2.0)
FRAMES = 3  # what each finite instance holds


@contextlib.contextmanager
def _publisher() -> Iterator[str]:
    """A capture's PUB (our FrameSender) sending a frame every 20 ms; yields the zmq+ spec."""
    endpoint = free_tcp_endpoint()
    stop = threading.Event()

    def send() -> None:
        with FrameSender(free_tcp_endpoint(), hwm=2, publish=endpoint) as sender:
            seq = 0
            while not stop.wait(0.02):
                sender.send(Frame(0, seq, time.time(), np.full((12, 12, 3), 9, np.uint8)))
                seq += 1

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    try:
        yield "zmq+" + endpoint
    finally:
        stop.set()
        thread.join(5)


def _video(tmp: Path) -> str:
    writer = cv2.VideoWriter(str(tmp / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (32, 24))
    for i in range(FRAMES):
        writer.write(np.full((24, 32, 3), 50 * i, np.uint8))
    writer.release()
    return str(tmp / "clip.avi")


def _images(tmp: Path) -> Path:
    folder = tmp / "frames"
    folder.mkdir(exist_ok=True)
    for i in range(FRAMES):
        assert cv2.imwrite(str(folder / f"{i}.png"), np.full((10, 14, 3), 30 * i, np.uint8))
    return folder


def _dataset(tmp: Path) -> str:
    frames = [[smooth_image(48, 64, s) for s in range(FRAMES)]]
    return str(
        write_dataset(
            tmp / "dataset", "v3.0", {"observation.images.top": frames}, {"observation.images.top": "libx264"}
        )
    )


def _log(tmp: Path) -> str:
    write_mcap_ros2(tmp / "drive.mcap", {"/cam": ("bayer_rggb8", [smooth_image(24, 32, s) for s in range(FRAMES)])})
    return str(tmp / "drive.mcap")


@contextlib.contextmanager
def _served() -> Iterator[str]:
    with MjpegServer() as server:
        yield server.url


def _fixed(spec: str) -> Callable[[Path], ContextManager[str]]:
    return lambda tmp: contextlib.nullcontext(spec)


def _camera(tmp: Path) -> ContextManager[str]:
    if not os.path.exists("/dev/video0"):
        pytest.skip("no camera on this machine (the camera kind's recognition is still checked)")
    return contextlib.nullcontext("/dev/video0")


# kind name -> a context giving a spec of a real instance; finite instances hold FRAMES frames
MAKERS: dict[str, Callable[[Path], ContextManager[str]]] = {
    "camera": _camera,
    "demo": _fixed("demo:2"),
    "subscription": lambda tmp: _publisher(),
    "stream": lambda tmp: _served(),
    "robot_log": lambda tmp: contextlib.nullcontext(_log(tmp)),
    "lerobot": lambda tmp: contextlib.nullcontext(_dataset(tmp)),
    "image_glob": lambda tmp: contextlib.nullcontext(str(_images(tmp) / "*.png")),
    "image_folder": lambda tmp: contextlib.nullcontext(str(_images(tmp))),
    "image_file": lambda tmp: contextlib.nullcontext(str(_images(tmp) / "0.png")),
    "video_file": lambda tmp: contextlib.nullcontext(_video(tmp)),
}
COUNTS = {"image_file": 1}  # finite instances holding other than FRAMES frames


def test_every_registered_kind_has_a_real_instance_here() -> None:
    assert sorted(MAKERS) == sorted(KINDS)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_kind_contract(name: str, tmp_path: Path) -> None:
    kind: SourceKind = KINDS[name]
    for example in kind.examples:  # examples that need no file recognise as their kind even when absent
        if not os.path.exists(example) and name not in ("image_folder",):
            assert kind_of(example).name == name, example
    with MAKERS[name](tmp_path) as spec:
        assert kind_of(spec).name == name
        specs = expand_sources([spec], CFG)
        assert len(specs) == 1  # each instance here is one camera
        source = open_source(specs[0], CFG)
        with source:
            frame = source.read()
            assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3 and min(frame.shape[:2]) >= 8
            if not source.finite:
                for _ in range(3):
                    assert source.read().shape[2] == 3  # goes on
                return
            n = 1
            while True:
                try:
                    source.read()
                except SourceExhausted:
                    break
                n += 1
                assert n <= 100, "a finite source that does not end"
        assert n == COUNTS.get(name, FRAMES)


def test_priorities_decide_and_nothing_falls_through(tmp_path: Path) -> None:
    (tmp_path / "frames").mkdir()
    assert kind_of(str(tmp_path / "frames")).name == "image_folder"
    assert kind_of(str(tmp_path / "frames" / "*.png")).name == "image_glob"  # also an image suffix: the glob wins
    log = tmp_path / "bag"
    log.mkdir()
    (log / "metadata.yaml").write_text("rosbag2_bagfile_information: {}\n")
    assert kind_of(str(log)).name == "robot_log"  # a folder too: its layout says more
    (tmp_path / "notes").write_bytes(b"x")
    assert kind_of(str(tmp_path / "notes")).name == "video_file"  # an existing file no kind claims: tried as video
    with pytest.raises(SourceError, match="not a kind of source this reads") as info:
        kind_of(str(tmp_path / "missing.xyz"))  # was opened as a video before: "cannot be decoded"
    assert "\n" not in str(info.value)


def test_the_source_help_of_run_capture_and_runtime_names_robot_logs_and_lerobot_datasets() -> None:
    """The kinds a user is most likely to look for are named where they look."""
    from agent.cli import build_parser

    for command in ("run", "capture", "runtime"):
        parser = build_parser(command)
        sub = next(a for a in parser._actions if a.dest == "command").choices[command]
        help_text = next(a.help for a in sub._actions if "--source" in a.option_strings)
        assert "robot log" in help_text and "LeRobot" in help_text, (command, help_text)


def test_a_file_inside_a_lerobot_dataset_that_no_kind_reads_asks_for_the_dataset_folder(tmp_path: Path) -> None:
    """`DATASET/meta/info.json` given as a source says to give the folder, not 'cannot be decoded'."""
    from agent.core.errors import SourceError
    from agent.robot.sources import kind_of

    (tmp_path / "ds" / "meta").mkdir(parents=True)
    (tmp_path / "ds" / "meta" / "info.json").write_text("{}")
    with pytest.raises(SourceError, match=r"is inside the LeRobot dataset '.*ds': give the dataset folder"):
        kind_of(str(tmp_path / "ds" / "meta" / "info.json"))
    assert kind_of(str(tmp_path / "ds")).name == "lerobot"
