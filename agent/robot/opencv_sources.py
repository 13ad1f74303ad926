"""Sources read through OpenCV's VideoCapture: a camera, a stream URL (RTSP, HTTP MJPEG, ...), a video file."""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
import numpy as np

from agent.core.errors import SourceError
from agent.core.image_codecs import bgr_to_rgb
from agent.robot.source_base import FrameSource, RecordingSource, SourceExhausted

log = logging.getLogger(__name__)

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
VIDEO_SUFFIXES = (
    ".mp4",
    ".avi",
    ".mkv",
    ".mov",
    ".webm",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".ts",
    ".mts",
    ".flv",
    ".wmv",
    ".ogv",
    ".3gp",
    ".y4m",
    ".mjpeg",
    ".mjpg",
    ".h264",
    ".h265",
    ".hevc",
)
CAMERA_DEVICE = re.compile(r"/dev/video\d+")


def is_camera(spec: str) -> bool:
    """A camera index ("0") or a V4L2 device path ("/dev/video2")."""
    return spec.isdigit() or CAMERA_DEVICE.fullmatch(spec) is not None


def camera_device(spec: str) -> Union[int, str]:
    return int(spec) if spec.isdigit() else spec


def is_stream(spec: str) -> bool:
    """A network stream URL (rtsp, rtmp, http(s), udp, tcp)."""
    return spec.lower().startswith(STREAM_SCHEMES)


def is_video_file(spec: str) -> bool:
    """A path with a video suffix (there or not: opening it says it is missing), or any existing regular file
    (the registry gives this kind the lowest priority, so a file another kind recognises goes there)."""
    return Path(spec).suffix.lower() in VIDEO_SUFFIXES or os.path.isfile(spec)


def _quiet_opencv() -> None:
    """Our own one-line errors replace OpenCV's and FFmpeg's multi-line stderr chatter.

    OpenCV reads OPENCV_FFMPEG_LOGLEVEL once, when its FFmpeg backend first starts (any
    VideoCapture or VideoWriter), so this also runs when this module is imported.
    """
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


_quiet_opencv()


class _OpenCVSource(FrameSource):
    """A cv2.VideoCapture target: shared by cameras, stream URLs and video files.

    `params`: (property id, value) pairs given to the backend at open (e.g. its timeouts); a backend
    that does not support one of them refuses to open, so only what the backend takes is passed.
    """

    def __init__(self, name: str, target: Union[int, str], api: int, params: Sequence[int] = ()) -> None:
        super().__init__(name)
        self._target, self._api, self._params = target, api, list(params)
        self._cap: Optional[cv2.VideoCapture] = None

    def _open(self) -> cv2.VideoCapture:
        _quiet_opencv()
        if self._params:
            cap = cv2.VideoCapture(self._target, self._api, self._params)
        else:
            cap = cv2.VideoCapture(self._target, self._api)
        if not cap.isOpened():
            cap.release()
            raise SourceError(self._open_error())
        return cap

    def _open_error(self) -> str:
        return f"{self.name} cannot be opened"

    def connect(self) -> None:
        self.disconnect()
        self._cap = self._open()

    def read(self) -> np.ndarray:
        if self._cap is None:
            raise SourceError(f"{self.name} is not connected")
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            raise SourceError(f"{self.name} stopped delivering frames")
        return bgr_to_rgb(bgr)

    def disconnect(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class CameraSource(_OpenCVSource):
    """A local camera by index ("0") or device path ("/dev/video0").

    OpenCV's camera backends take no read timeout at open; a camera whose driver stops delivering is
    shown stale by capture's watchdog (`capture.read_timeout_s`) and reopened once the blocked read
    fails (OpenCV's V4L2 backend gives up after its own select timeout, OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT).
    """

    live = True

    def __init__(self, device: Union[int, str]) -> None:
        super().__init__(f"camera {device}", device, cv2.CAP_ANY)

    def _open_error(self) -> str:
        return f"{self.name} cannot be opened (not connected, no permission, or in use by another process)"


class StreamSource(_OpenCVSource):
    """A network stream (RTSP, HTTP MJPEG, ...) decoded by OpenCV's FFmpeg backend.

    `timeout_s` bounds both the open and each read (CAP_PROP_OPEN_TIMEOUT_MSEC /
    CAP_PROP_READ_TIMEOUT_MSEC; OpenCV's default is 30 s for each): a server that accepts the
    connection and then sends nothing fails the open, and a stream that stalls fails its next read
    (`SourceError`, so capture reopens it) after `timeout_s`. Measured on OpenCV 5.0 with a loopback
    HTTP MJPEG server that stalls: with 2 s, the open of a silent stream failed after 2.04 s and the
    read of a stalled one after 2.01 s.
    """

    live = True

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        ms = max(1, round(timeout_s * 1000))
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        super().__init__(f"stream {url!r}", url, cv2.CAP_FFMPEG, params)

    def _open_error(self) -> str:
        return f"{self.name} cannot be opened (unreachable, wrong path, or unsupported format)"


class VideoFileSource(RecordingSource, _OpenCVSource):
    """A recorded video; finite unless `loop`. Reopening resumes where it was lost.

    A frame that does not decode (a damaged chunk) is skipped, counted in `skipped` and logged (the
    first, then every 100th); only more than `max_bad_frames` failures in a row end the file, because
    OpenCV's FFmpeg reader goes on after a damaged packet: measured on OpenCV 5.0 with one chunk of a
    60-frame MJPG AVI overwritten, `read()` fails once and the next 30 frames decode; a damaged mp4v
    file failed 3 frames in a row and then decoded on. A failed read at the real end costs about
    1 µs, so the bound is cheap. Seeking past a failure (CAP_PROP_POS_FRAMES) is not needed for that
    and would land on a keyframe in a codec with P-frames, losing more. A file that ends more than
    max(2, 5 %) frames short of the count its header reports (truncated, or damaged where the
    reader could not find the next frame) says so in one warning.
    """

    LOG_SKIP_EVERY = 100

    def __init__(self, path: Union[str, Path], loop: bool = False, max_bad_frames: int = 50) -> None:
        if max_bad_frames < 0:
            raise ValueError(f"max_bad_frames must be >= 0, got {max_bad_frames}")
        self.path = Path(path)
        # FFmpeg reads "NAME:rest" as a URL of protocol NAME: "2024-01-05T10:30:00.avi" is opened by its absolute path
        super().__init__(f"video file '{self.path}'", os.path.abspath(self.path), cv2.CAP_FFMPEG)
        self.loop, self.max_bad_frames = loop, max_bad_frames
        self._position = 0  # frames consumed in this pass (delivered or skipped): where a reopen resumes
        self._reported = 0  # the frame count the container reports; 0 = unknown
        self._warned_short = False
        self._pending: Optional[np.ndarray] = None

    def connect(self) -> None:
        if not self.path.exists():
            raise SourceError(f"{self.name} does not exist")
        if not self.path.is_file() or not os.access(self.path, os.R_OK):
            raise SourceError(f"{self.name} is not a readable file")
        super().connect()
        assert self._cap is not None  # opened by connect (it raises otherwise)
        count = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self._reported = int(count) if math.isfinite(count) and count > 0 else 0
        if self._position:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, self._position)
            return
        self._pending = self._decode()
        if self._pending is None:
            self.disconnect()
            raise SourceError(f"{self.name} has no decodable frames (not a video, or a codec OpenCV lacks)")
        self._media_time = self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0

    @property
    def frame_count(self) -> Optional[int]:
        return self._reported or None

    def start_at(self, frame: int) -> None:
        self._position = max(0, int(frame))  # connect seeks there (CAP_PROP_POS_FRAMES), as a reopen does

    def _open_error(self) -> str:
        return f"{self.name} cannot be decoded (not a video, or a container OpenCV lacks)"

    def read(self) -> np.ndarray:
        if self._pending is not None:
            image, self._pending = self._pending, None
            return image
        return self._next()

    def _decode(self) -> Optional[np.ndarray]:
        """The next frame that decodes, as RGB, skipping up to `max_bad_frames` failures in a row;
        None at the end of the file (failures past the bound are the end, not skipped frames)."""
        assert self._cap is not None
        failures = 0
        while True:
            ok, bgr = self._cap.read()
            if ok and bgr is not None:
                break
            if failures >= self.max_bad_frames:
                return None
            failures += 1
        for _ in range(failures):
            self.skipped += 1
            if self.skipped == 1 or self.skipped % self.LOG_SKIP_EVERY == 0:
                log.warning(
                    "%s: skipped an undecodable frame at frame %d (%d so far)", self.name, self._position, self.skipped
                )
            self._position += 1
        self._position += 1
        return bgr_to_rgb(bgr)

    def _warn_if_short(self) -> None:
        missing = self._reported - self._position
        if self._warned_short or missing <= max(2, 0.05 * self._reported):
            return
        self._warned_short = True
        log.warning(
            "%s ended after %d frames but its header reports %d: the file is truncated or damaged past recovery",
            self.name,
            self._position,
            self._reported,
        )

    def _next(self) -> np.ndarray:
        if self._cap is None:
            raise SourceError(f"{self.name} is not connected")
        image = self._decode()
        if image is None:
            self._warn_if_short()
            if not self.loop or self._position == 0:
                raise SourceExhausted(f"{self.name} has no more frames")
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            self._position = 0
            image = self._decode()
            if image is None:
                raise SourceExhausted(f"{self.name} has no more frames")
        self._media_time = self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        return image
