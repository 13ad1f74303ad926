"""The registry of source kinds: which kind of frame source a spec is, its options, and its reader.

Every source has the same small surface (`FrameSource` in agent/robot/source_base.py: connect / read /
disconnect, a context manager), so the capture loop, its reconnect logic and the runtime consumer are
written once for all of them. A kind is one file plus one `SourceKind` registration (`KINDS` below):

- `recognise(spec) -> bool`, with a `priority`: of the kinds that recognise a spec the highest priority
  wins (PRIORITY_EXACT for prefixes and patterns, PRIORITY_FORMAT for paths whose content says what
  they are, PRIORITY_GLOB, PRIORITY_PATH for folders and suffixes, PRIORITY_ANY_FILE for "some existing
  file"); two at the same priority are an error, none is an error listing the kinds. Recognition never
  depends on the order of registration, and nothing falls through to a default kind.
- `open(spec, ctx) -> FrameSource` (not yet connected); `ctx` is a `SourceContext`: the capture and wire
  sections, loaded CURVE keys, and `ctx.options(kind)`, the kind's own options.
- `options`: a pydantic model, filled from `capture.source_options.<kind name>` and checked at start-up
  (`check_source_options`); None for kinds without their own options. The older flat keys
  (`capture.loop_video`, `shuffle`, `bit_depth`, `max_bad_frames`, `read_timeout_s`) keep their meaning.
- `expand(spec, ctx) -> list[str]`, optional: a spec of several cameras (a robot log with several image
  topics) becomes one spec per camera (`drive.mcap#/front/image_raw`, ...), each an ordinary
  one-camera source. `expand_sources` applies it; capture numbers the results `capture.camera_id_base`
  + index and keeps each source's name in the status file and capture.jsonl.
- `examples`: specs the kind recognises (the contract test in tests/agent/test_source_kinds.py runs
  over every registered kind).

A kind written against `CaptureConfig` alone registers in one line:

    register_source_kind(SourceKind.simple("lerobot", is_lerobot_dataset, open_lerobot,
                                           expand=lerobot_camera_specs, priority=PRIORITY_FORMAT))

Failures to open are one-line `SourceError`s that name the source.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

from pydantic import BaseModel, ValidationError

from agent.core.config import CaptureConfig, WireConfig
from agent.core.errors import ConfigError, SourceError
from agent.robot.curve import WireSecurity
from agent.robot.demo_source import DemoSource, demo_seed, is_demo
from agent.robot.image_files import (
    IMAGE_EXTENSIONS,
    ImageFilesSource,
    is_image_file,
    is_image_folder,
    is_image_glob,
)
from agent.robot.lerobot_dataset import is_lerobot_dataset, lerobot_camera_specs, open_lerobot
from agent.robot.opencv_sources import (
    VIDEO_SUFFIXES,
    CameraSource,
    StreamSource,
    VideoFileSource,
    camera_device,
    is_camera,
    is_stream,
    is_video_file,
)
from agent.robot.robot_logs import RobotLogOptions, RobotLogSource, is_robot_log, log_camera_specs, split_topic
from agent.robot.source_base import FrameSource, SourceExhausted
from agent.robot.subscriber import SUBSCRIBE_PREFIX, SubscriptionSource, is_subscription

__all__ = [
    "CameraSource",
    "DemoSource",
    "FrameSource",
    "IMAGE_EXTENSIONS",
    "ImageFilesSource",
    "KINDS",
    "RobotLogSource",
    "SourceContext",
    "SourceExhausted",
    "SourceKind",
    "StreamSource",
    "SubscriptionSource",
    "VideoFileSource",
    "check_source_options",
    "check_sources",
    "expand_sources",
    "kind_of",
    "open_source",
    "register_source_kind",
    "resolve_spec",
]

PRIORITY_EXACT = 100  # a prefix or a full pattern: "zmq+", "rtsp://", "demo:3", "0", "/dev/video0"
PRIORITY_FORMAT = 50  # a path whose content or layout says what it is: a robot log, a dataset folder
PRIORITY_GLOB = 20  # a pattern that is not an existing path
PRIORITY_PATH = 10  # a folder, a suffix
PRIORITY_ANY_FILE = 1  # some existing file no other kind claims: tried as a video


@dataclass(frozen=True)
class SourceContext:
    """What opening a source may need besides its spec: the capture and wire sections and loaded keys."""

    capture: CaptureConfig
    wire: Optional[WireConfig] = None
    security: Optional[WireSecurity] = None

    def options(self, kind: "SourceKind") -> Optional[BaseModel]:
        """`capture.source_options.<kind.name>` checked against the kind's model (defaults where absent);
        ConfigError naming the key when it does not fit."""
        if kind.options is None:
            return None
        values = self.capture.source_options.get(kind.name) or {}
        try:
            return kind.options.model_validate(values)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err.get("loc", ()))
            raise ConfigError(
                f"capture.source_options.{kind.name}{'.' + where if where else ''}: {err['msg']}"
            ) from None


@dataclass(frozen=True)
class SourceKind:
    """One kind of frame source: how a spec is recognised, its options, and how it is opened (module docstring)."""

    name: str
    recognise: Callable[[str], bool]
    open: Callable[[str, SourceContext], FrameSource]
    priority: int = PRIORITY_PATH
    expand: Optional[Callable[[str, SourceContext], list[str]]] = None
    options: Optional[type[BaseModel]] = None
    examples: tuple[str, ...] = field(default=())
    describe: str = ""

    @classmethod
    def simple(
        cls,
        name: str,
        recognise: Callable[[str], bool],
        open: Callable[[str, CaptureConfig], FrameSource],
        *,
        expand: Optional[Callable[[str], list[str]]] = None,
        priority: int = PRIORITY_PATH,
        examples: tuple[str, ...] = (),
        describe: str = "",
    ) -> "SourceKind":
        """A kind whose reader needs only the capture section, and whose expansion only the spec."""
        return cls(
            name,
            recognise,
            lambda spec, ctx: open(spec, ctx.capture),
            priority,
            (lambda spec, ctx: expand(spec)) if expand is not None else None,
            None,
            examples,
            describe or name,
        )


def _open_log(spec: str, ctx: SourceContext) -> FrameSource:
    options = ctx.options(KINDS["robot_log"])
    assert isinstance(options, RobotLogOptions)
    return RobotLogSource(spec, options, loop=ctx.capture.loop_video)


def _expand_log(spec: str, ctx: SourceContext) -> list[str]:
    options = ctx.options(KINDS["robot_log"])
    assert isinstance(options, RobotLogOptions)
    return log_camera_specs(spec, options)


def _open_folder(spec: str, ctx: SourceContext) -> FrameSource:
    c = ctx.capture
    return ImageFilesSource(spec, loop=c.loop_video, pattern=False, shuffle=c.shuffle, bit_depth=c.bit_depth)


def _open_glob(spec: str, ctx: SourceContext) -> FrameSource:
    c = ctx.capture
    return ImageFilesSource(spec, loop=c.loop_video, pattern=True, shuffle=c.shuffle, bit_depth=c.bit_depth)


def _open_image(spec: str, ctx: SourceContext) -> FrameSource:
    c = ctx.capture
    return ImageFilesSource(
        glob.escape(spec), loop=c.loop_video, pattern=True, shuffle=c.shuffle, bit_depth=c.bit_depth
    )


KINDS: dict[str, SourceKind] = {}


def register_source_kind(kind: SourceKind) -> SourceKind:
    """Add a kind to the registry (a name already there is an error: each kind is registered once)."""
    if kind.name in KINDS:
        raise ValueError(f"source kind {kind.name!r} is already registered")
    KINDS[kind.name] = kind
    return kind


for _kind in (
    SourceKind(
        "camera",
        is_camera,
        lambda s, ctx: CameraSource(camera_device(s)),
        PRIORITY_EXACT,
        examples=("0", "/dev/video0"),
        describe="a camera index or /dev/videoN",
    ),
    SourceKind(
        "demo",
        is_demo,
        lambda s, ctx: DemoSource(ctx.capture.height, ctx.capture.width, ctx.capture.fps, seed=demo_seed(s)),
        PRIORITY_EXACT,
        examples=("demo", "demo:3"),
        describe="'demo' or 'demo:SEED'",
    ),
    SourceKind(
        "subscription",
        is_subscription,
        lambda s, ctx: SubscriptionSource(
            s[len(SUBSCRIBE_PREFIX) :], ctx.wire, timeout_s=ctx.capture.read_timeout_s, security=ctx.security
        ),
        PRIORITY_EXACT,
        examples=("zmq+tcp://127.0.0.1:5556",),
        describe="zmq+tcp://HOST:PORT",
    ),
    SourceKind(
        "stream",
        is_stream,
        lambda s, ctx: StreamSource(s, timeout_s=ctx.capture.read_timeout_s),
        PRIORITY_EXACT,
        examples=("rtsp://10.0.0.2/stream", "http://cam.local/mjpg"),
        describe="a stream URL",
    ),
    SourceKind(
        "robot_log",
        is_robot_log,
        _open_log,
        PRIORITY_FORMAT,
        expand=_expand_log,
        options=RobotLogOptions,
        examples=("drive.mcap", "drive.mcap#/front/image_raw", "run.bag"),
        describe="an MCAP file, rosbag2 folder or ROS 1 .bag (LOG#TOPIC for one topic)",
    ),
    SourceKind.simple(
        "lerobot",
        is_lerobot_dataset,
        open_lerobot,
        expand=lerobot_camera_specs,
        priority=PRIORITY_FORMAT,
        examples=(),
        describe="a LeRobot dataset folder (meta/info.json; DIR#KEY for one camera)",
    ),
    SourceKind(
        "image_glob", is_image_glob, _open_glob, PRIORITY_GLOB, examples=("frames/*.png",), describe="a glob of images"
    ),
    SourceKind(
        "image_folder",
        is_image_folder,
        _open_folder,
        PRIORITY_PATH,
        examples=("frames/",),
        describe="a folder of images",
    ),
    SourceKind(
        "image_file", is_image_file, _open_image, PRIORITY_PATH, examples=("photo.png",), describe="an image file"
    ),
    SourceKind(
        "video_file",
        is_video_file,
        lambda s, ctx: VideoFileSource(s, loop=ctx.capture.loop_video, max_bad_frames=ctx.capture.max_bad_frames),
        PRIORITY_PATH,
        examples=("clip.mp4",),
        describe="a video file",
    ),
):
    register_source_kind(_kind)


def kind_of(spec: str) -> SourceKind:
    """The registered kind that recognises `spec` with the highest priority (module docstring).

    A video file's kind also takes any existing file no other kind claims, at PRIORITY_ANY_FILE.
    SourceError (one line) when none does or two tie."""
    spec = spec.strip()
    if not spec:
        raise SourceError("empty source spec (expected a camera index, video, URL, folder, glob, robot log or 'demo')")
    matches: list[tuple[int, SourceKind]] = []
    for kind in KINDS.values():
        if kind.recognise(spec):
            priority = kind.priority
            if kind.name == "video_file" and Path(spec).suffix.lower() not in VIDEO_SUFFIXES:
                priority = PRIORITY_ANY_FILE
            matches.append((priority, kind))
    if not matches:
        kinds = "; ".join(f"{k.describe or k.name} ({', '.join(k.examples)})" for k in KINDS.values())
        what = "no such file or folder, and not" if not os.path.exists(spec) else "not"
        raise SourceError(f"source {spec!r}: {what} a kind of source this reads: {kinds}")
    best = max(p for p, _ in matches)
    if best == PRIORITY_ANY_FILE:  # a file no kind claims: a dataset's meta/info.json wants its folder
        dataset = next((str(d) for d in Path(spec).resolve().parents if is_lerobot_dataset(str(d))), None)
        if dataset is not None:
            raise SourceError(f"source {spec!r} is inside the LeRobot dataset '{dataset}': give the dataset folder")
    top = [k.name for p, k in matches if p == best]
    if len(top) > 1:
        raise SourceError(f"source {spec!r} is ambiguous: the kinds {', '.join(top)} all recognise it")
    return next(k for p, k in matches if p == best)


def open_source(
    spec: str, cfg: CaptureConfig, wire: Optional[WireConfig] = None, security: Optional[WireSecurity] = None
) -> FrameSource:
    """The source for one camera's `spec` (not yet connected), by its kind (`kind_of`); `wire` gives a zmq+
    subscription its limits, and its keys unless `security` (keys already loaded from that wire section) is
    given. A spec of several cameras is expanded first (`expand_sources`), not here."""
    spec = spec.strip()
    return kind_of(spec).open(spec, SourceContext(cfg, wire, security))


def expand_sources(specs: Iterable[str], cfg: CaptureConfig) -> list[str]:
    """One spec per camera: each spec whose kind has `expand` (a robot log with several image topics) is
    replaced by its cameras' specs, the others kept. Idempotent. SourceError for a log that cannot be read."""
    ctx = SourceContext(cfg)
    out: list[str] = []
    for spec in specs:
        kind = kind_of(spec)
        out.extend(kind.expand(spec.strip(), ctx) if kind.expand is not None else [spec])
    return out


def resolve_spec(spec: str) -> str:
    """An existing path made absolute (so a child process in another directory finds it); `PATH#TOPIC` with
    its PATH made absolute; anything else as it is."""
    if os.path.exists(spec):
        return str(Path(spec).resolve())
    path, topic = split_topic(spec)
    if topic is not None and os.path.exists(path):
        return f"{Path(path).resolve()}#{topic}"
    return spec


def check_source_options(cfg: CaptureConfig) -> None:
    """`capture.source_options` names only registered kinds with options, and each fits its kind's model."""
    for name in cfg.source_options:
        kind = KINDS.get(name)
        if kind is None or kind.options is None:
            with_options = [k.name for k in KINDS.values() if k.options is not None]
            raise ConfigError(
                f"capture.source_options.{name}: no source kind of that name has options "
                f"(kinds with options: {', '.join(with_options)})"
            )
        SourceContext(cfg).options(kind)


def check_sources(specs: Iterable[str], cfg: CaptureConfig, wire: Optional[WireConfig] = None) -> list[FrameSource]:
    """Expand the specs to one per camera (`expand_sources`), pick each one's source and open once (then
    close) each one that cannot come back by waiting.

    A source that is not `live` (a video file, robot log, image folder or glob, an image, the demo scene)
    fails the same way every time, so it is checked before anything starts: opened and its first frame
    decoded. Live sources (cameras, streams, subscriptions) are only picked, not connected: they may
    come up later, and capture waits for them. Used by `run` and `replay` before they start any process.
    Returns the sources (closed), one per camera in order. Raises SourceError (one line) naming the
    first bad source, ConfigError for bad `capture.source_options`, or EndpointError / ConfigError for a
    subscription's endpoint or key files.
    """
    check_source_options(cfg)
    sources = []
    for spec in expand_sources(specs, cfg):
        source = open_source(spec, cfg, wire)
        if not source.live:
            with source:
                try:
                    source.read()
                except SourceExhausted:
                    raise SourceError(f"{source.name} holds no frame that can be read") from None
        sources.append(source)
    return sources
