"""What every frame source is: `FrameSource` (connect / read / disconnect, a context manager) and its end.

Recordings (files, logs, datasets) derive from `RecordingSource`, which owns `finite` and the recording clock.
`read()` returns uint8 HxWx3 RGB at the source's native size and raises `SourceError` when the
source is lost (the capture loop reopens it) or `SourceExhausted` when a finite source has ended.
The kinds of source are registered in agent/robot/sources.py (`KINDS`, `open_source` picks one for a
spec), each in its own file: opencv_sources.py (camera, stream URL, video file), image_files.py (folder,
glob, image), robot_logs.py (MCAP, rosbag2, ROS 1 bag), lerobot_dataset.py, demo_source.py, subscriber.py (another
capture's PUB).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Optional

import numpy as np

from agent.core.errors import SourceError


class SourceExhausted(SourceError):
    """A finite source (video file, image folder) has delivered its last frame: an end, not a failure."""


class FrameSource(ABC):
    """One stream of RGB frames. Use from a single thread; `connect` again after a loss to reopen.

    `live` sources (cameras, streams, subscriptions) deliver at their own pace; the others are
    paced by the reader (a video by its own timestamps, the rest at the configured fps). A source
    that relays several cameras (a subscription) sets `camera_id` to the camera of each frame it
    returns; capture keeps those ids, where a one-camera source gets `capture.camera_id_base` + its index.
    """

    live: bool = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.camera_id: Optional[int] = None  # set by a source of several cameras: whose was the last frame read
        self.skipped = 0  # frames or messages not delivered: undecodable, or in an encoding not read
        self.errors = 0  # damage that ended a pass of a recording early (a log cut short)

    @property
    def finite(self) -> bool:
        """True if the source ends (capture stops when all its finite sources have)."""
        return False

    @property
    def media_time_s(self) -> Optional[float]:
        """The recording's own clock at the last frame read, in seconds (a video's container time, a log's
        header stamp); None for live sources. Capture sends it as the frame's time on the wire."""
        return None

    @property
    def frame_count(self) -> Optional[int]:
        """Frames a recording holds (known once connected); None when unknown or unbounded."""
        return None

    def start_at(self, frame: int) -> None:
        """Begin `frame` frames in at the first connect, skipping those before (a resumed replay continues
        where it stopped). SourceError for a source that cannot (only recordings can)."""
        if frame:
            raise SourceError(f"{self.name} cannot start part-way: only recordings (files, folders) can")

    @abstractmethod
    def connect(self) -> None:
        """Open the source; raises SourceError naming what could not be opened."""

    @abstractmethod
    def read(self) -> np.ndarray:
        """Next frame as uint8 HxWx3 RGB; SourceError when lost, SourceExhausted at the end."""

    @abstractmethod
    def disconnect(self) -> None:
        """Release the device or file; safe to call when not connected."""

    def __enter__(self) -> "FrameSource":
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class RecordingSource(FrameSource):
    """A recording played back (a video file, a robot log's topic, a LeRobot camera, an image folder): finite
    unless `loop`, and `media_time_s` the recording's own clock at the last frame read.

    The one owner of that recording clock: a subclass sets `self.loop` and, as it delivers a frame, stores
    the frame's time in the recording (seconds) in `self._media_time`; a recording without a clock (image
    files) leaves it None and is paced by the reader.
    """

    loop: bool = False
    _media_time: Optional[float] = None

    @property
    def finite(self) -> bool:
        return not self.loop

    @property
    def media_time_s(self) -> Optional[float]:
        return self._media_time
