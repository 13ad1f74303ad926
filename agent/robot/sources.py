"""Frame sources: camera, video file, stream URL, image folder or glob, the demo scene, another capture's PUB.

Every source has the same small surface (connect / read / disconnect, a context manager), so the
capture loop, its reconnect logic and the runtime consumer are written once for all of them.
`read()` returns uint8 HxWx3 RGB at the source's native size and raises `SourceError` when the
source is lost (the capture loop reopens it) or `SourceExhausted` when a finite source has ended.
Failures to open are one-line `SourceError`s that name the source.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import cv2
import numpy as np

from agent.core.config import CaptureConfig, WireConfig
from agent.robot.curve import WireSecurity
from agent.core.demo_scene import DemoScene
from agent.core.errors import SourceError
from agent.core.frames import bgr_to_rgb, read_image_bgr
from agent.robot.subscriber import LatestFrameSubscriber

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
SUBSCRIBE_PREFIX = "zmq+"


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


    @property
    def finite(self) -> bool:
        """True if the source ends (capture stops when all its finite sources have)."""
        return False

    @property
    def media_time_s(self) -> Optional[float]:
        """Position of the last frame read within a recording, in seconds; None for live sources."""
        return None

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


class VideoFileSource(_OpenCVSource):
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
        super().__init__(f"video file '{self.path}'", str(self.path), cv2.CAP_FFMPEG)
        self.loop, self.max_bad_frames = loop, max_bad_frames
        self.skipped = 0  # undecodable frames skipped, over all passes
        self._position = 0  # frames consumed in this pass (delivered or skipped): where a reopen resumes
        self._reported = 0  # the frame count the container reports; 0 = unknown
        self._warned_short = False
        self._pending: Optional[np.ndarray] = None
        self._media_time: Optional[float] = None

    @property
    def finite(self) -> bool:
        return not self.loop

    @property
    def media_time_s(self) -> Optional[float]:
        return self._media_time

    def connect(self) -> None:
        if not self.path.exists():
            raise SourceError(f"{self.name} does not exist")
        if not self.path.is_file() or not os.access(self.path, os.R_OK):
            raise SourceError(f"{self.name} is not a readable file")
        super().connect()
        if self._position:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, self._position)
            return
        count = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self._reported = int(count) if math.isfinite(count) and count > 0 else 0
        self._pending = self._decode()
        if self._pending is None:
            self.disconnect()
            raise SourceError(f"{self.name} has no decodable frames (not a video, or a codec OpenCV lacks)")
        self._media_time = self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0

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


class ImageFilesSource(FrameSource):
    """Still images from a folder (searched recursively) or a glob pattern, in sorted path order.

    With `shuffle`, each pass goes through the files in a new random order (seeded, so a run
    reproduces it): a folder sorted by class is otherwise a class-after-class stream.

    An unreadable file is skipped with a warning; a folder that vanishes is a lost source, and
    reopening it resumes at the same position. Images with 16-bit samples are scaled by `bit_depth`
    or the depth the file states (`agent.core.frames.read_image_bgr`).
    """

    def __init__(
        self,
        spec: str,
        loop: bool = False,
        pattern: Optional[bool] = None,
        shuffle: bool = False,
        bit_depth: Optional[int] = None,
    ) -> None:
        self._is_glob = any(ch in spec for ch in "*?[") if pattern is None else pattern
        super().__init__(f"image glob {spec!r}" if self._is_glob else f"image folder '{spec}'")
        self.spec, self.loop, self.bit_depth = spec, loop, bit_depth
        self._order = np.random.default_rng(0) if shuffle else None
        self._files: list[str] = []
        self._index = 0
        self.skipped = 0
        self.delivered = 0

    @property
    def finite(self) -> bool:
        return not self.loop

    def _list(self) -> list[str]:
        if self._is_glob:
            files = [p for p in glob.glob(self.spec, recursive=True) if os.path.isfile(p)]
            if not files:
                raise SourceError(f"{self.name} matches no files")
            return sorted(files)
        root = Path(self.spec)
        if not root.is_dir():
            raise SourceError(f"{self.name} does not exist")
        files = [str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
        if not files:
            raise SourceError(f"{self.name} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        return sorted(files)

    def connect(self) -> None:
        """List the files; before the first image is delivered, also check that one decodes, so a
        folder of only unreadable files is a start-up error rather than a capture that sends nothing."""
        files = self._list()
        if self.delivered == 0 and not any(read_image_bgr(path, self.bit_depth) is not None for path in files):
            raise SourceError(f"{self.name}: none of its {len(files)} files could be read as an image")
        self._files = files
        if self._index == 0:  # a reconnect resumes the pass it was in
            self._shuffle()

    def _shuffle(self) -> None:
        if self._order is not None:
            self._files = [self._files[i] for i in self._order.permutation(len(self._files))]

    def read(self) -> np.ndarray:
        if not self._files:
            raise SourceError(f"{self.name} is not connected")
        for _ in range(len(self._files)):
            if self._index >= len(self._files):
                if self.delivered == 0:
                    break  # a whole pass without one readable image
                if not self.loop:
                    raise SourceExhausted(f"{self.name} has no more images")
                self._index = 0
                self._shuffle()
            path = self._files[self._index]
            self._index += 1
            bgr = read_image_bgr(path, self.bit_depth)
            if bgr is not None:
                self.delivered += 1
                return bgr_to_rgb(bgr)
            if not os.path.exists(path):
                raise SourceError(f"{self.name}: {path} has disappeared")
            self.skipped += 1
            log.warning("%s: skipping unreadable image %s", self.name, path)
        raise SourceError(f"{self.name}: none of its {len(self._files)} files could be read as an image")

    def disconnect(self) -> None:
        self._files = []


class DemoSource(FrameSource):
    """The procedural demo scene (agent/core/demo_scene.py), rendered at the stored size: never ends."""

    def __init__(self, height: int, width: int, fps: float, seed: int = 0) -> None:
        super().__init__(f"demo scene (seed {seed})")
        self.height, self.width, self.fps, self.seed = height, width, fps, seed
        self._scene: Optional[DemoScene] = None
        self._index = 0

    def connect(self) -> None:
        self._scene = DemoScene(self.height, self.width, seed=self.seed)

    def read(self) -> np.ndarray:
        if self._scene is None:
            raise SourceError(f"{self.name} is not connected")
        image = self._scene.render(self._index / self.fps)
        self._index += 1
        return image

    def disconnect(self) -> None:
        self._scene = None


class SubscriptionSource(FrameSource):
    """Newest frames of another capture process, via its PUB ("zmq+tcp://HOST:PORT", "zmq+ipc://PATH"):
    every camera it publishes, taken in turn (agent/robot/subscriber.py, `LatestFrameSubscriber`)."""

    live = True

    def __init__(
        self,
        endpoint: str,
        wire: Optional[WireConfig] = None,
        timeout_s: float = 5.0,
        security: Optional[WireSecurity] = None,
    ) -> None:
        super().__init__(f"subscription {endpoint!r}")
        self.endpoint, self.timeout_s = endpoint, timeout_s
        self._wire = wire if wire is not None else WireConfig()
        # key files checked now, not at first connect; a capture hands in the keys it loaded for its sender
        self._security = security if security is not None else WireSecurity.from_config(self._wire)
        self._sub: Optional[LatestFrameSubscriber] = None

    def connect(self) -> None:
        self.disconnect()
        self._sub = LatestFrameSubscriber(self.endpoint, max_side=self._wire.max_frame_side, security=self._security)

    def read(self) -> np.ndarray:
        """The newest frame of each publishing camera in turn (`camera_id` says whose)."""
        if self._sub is None:
            raise SourceError(f"{self.name} is not connected")
        frame = self._sub.latest(self.timeout_s)
        if frame is None:
            raise SourceError(f"{self.name}: no frame for {self.timeout_s:g} s")
        self.camera_id = frame.camera_id
        return frame.image

    def disconnect(self) -> None:
        if self._sub is not None:
            self._sub.close()
            self._sub = None


def open_source(
    spec: str, cfg: CaptureConfig, wire: Optional[WireConfig] = None, security: Optional[WireSecurity] = None
) -> FrameSource:
    """Pick the source for `spec` (not yet connected); `wire` gives a zmq+ subscription its limits, and its
    keys unless `security` (keys already loaded from that wire section) is given.

    "0" / "/dev/videoN" camera · "demo" or "demo:SEED" · "zmq+tcp://..." subscription ·
    rtsp/http(s)/... URL · a path with * ? [ glob · a directory (recursive) · otherwise a video file.
    """
    spec = spec.strip()
    if not spec:
        raise SourceError("empty source spec (expected a camera index, video, URL, folder, glob or 'demo')")
    if spec.isdigit():
        return CameraSource(int(spec))
    if re.fullmatch(r"/dev/video\d+", spec):
        return CameraSource(spec)
    demo = re.fullmatch(r"demo(?::(\d+))?", spec)
    if demo:
        return DemoSource(cfg.height, cfg.width, cfg.fps, seed=int(demo.group(1) or 0))
    if spec.startswith(SUBSCRIBE_PREFIX):
        return SubscriptionSource(spec[len(SUBSCRIBE_PREFIX) :], wire, timeout_s=cfg.read_timeout_s, security=security)
    if spec.lower().startswith(STREAM_SCHEMES):
        return StreamSource(spec, timeout_s=cfg.read_timeout_s)
    if any(ch in spec for ch in "*?[") or Path(spec).is_dir():
        return ImageFilesSource(spec, loop=cfg.loop_video, shuffle=cfg.shuffle, bit_depth=cfg.bit_depth)
    if Path(spec).suffix.lower() in IMAGE_EXTENSIONS:
        return ImageFilesSource(
            glob.escape(spec), loop=cfg.loop_video, pattern=True, shuffle=cfg.shuffle, bit_depth=cfg.bit_depth
        )
    return VideoFileSource(spec, loop=cfg.loop_video, max_bad_frames=cfg.max_bad_frames)


def check_sources(
    specs: Iterable[str], cfg: CaptureConfig, wire: Optional[WireConfig] = None
) -> list[FrameSource]:
    """Pick the source of each spec and open once (then close) each one that cannot come back by waiting.

    A source that is not `live` (a video file, image folder or glob, an image, the demo scene) fails
    the same way every time, so it is checked before anything starts: opened and its first frame
    decoded. Live sources (cameras, streams, subscriptions) are only picked, not connected: they may
    come up later, and capture waits for them. Used by `run` and `replay` before they start any process.
    Returns the sources (closed), in the order of `specs`. Raises SourceError (one line) naming the
    first bad source, or EndpointError / ConfigError for a subscription's endpoint or key files.
    """
    sources = []
    for spec in specs:
        source = open_source(spec, cfg, wire)
        if not source.live:
            with source:
                pass
        sources.append(source)
    return sources
