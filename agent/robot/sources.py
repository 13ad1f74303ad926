"""Frame sources: camera, video file, stream URL, image folder or glob, the demo scene, another capture's PUB.

Every source has the same small surface (`FrameSource` in agent/robot/source_base.py: connect /
read / disconnect, a context manager), so the capture loop, its reconnect logic and the runtime
consumer are written once for all of them. `open_source` picks the source for a spec and
`check_sources` opens the ones that cannot come back by waiting; the kinds live in
agent/robot/opencv_sources.py (camera, stream, video file), agent/robot/image_files.py (folder,
glob) and here (the demo scene, a subscription to another capture's PUB). Failures to open are
one-line `SourceError`s that name the source.
"""

from __future__ import annotations

import glob
import logging
import re
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from agent.core.config import CaptureConfig, WireConfig
from agent.core.demo_scene import DemoScene
from agent.core.errors import SourceError
from agent.robot.curve import WireSecurity
from agent.robot.image_files import IMAGE_EXTENSIONS, ImageFilesSource
from agent.robot.opencv_sources import CameraSource, StreamSource, VideoFileSource
from agent.robot.source_base import FrameSource, SourceExhausted
from agent.robot.subscriber import LatestFrameSubscriber

__all__ = [
    "CameraSource", "DemoSource", "FrameSource", "IMAGE_EXTENSIONS", "ImageFilesSource", "SourceExhausted",
    "StreamSource", "SubscriptionSource", "VideoFileSource", "check_sources", "open_source",
]

log = logging.getLogger(__name__)

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
SUBSCRIBE_PREFIX = "zmq+"


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
