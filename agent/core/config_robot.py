"""The config sections of the robot-side processes: capture, wire, runtime and `run`'s supervision.

Also `ConfigSection`, the base every section shares (unknown keys rejected, values checked on assignment,
frozen). The root `Config`, the learner's sections and `load_config` are in agent/core/config.py and
agent/core/config_learning.py.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.core.wire import MAX_SIDE


class ConfigSection(BaseModel):
    """One section of `Config`: unknown keys are errors, values are validated on assignment, frozen."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True)


Pace = Literal["realtime", "asap"]
"""How recordings are played: at their recorded speed (capped at `capture.fps`), or as fast as they
can be read (offline replay; with a lossless sender, exactly as fast as the trainer consumes)."""


class CaptureConfig(ConfigSection):
    """Capture side: what is read, how often, and how it is shrunk before it crosses the wire."""

    sources: list[str] = Field(default_factory=lambda: ["demo"], min_length=1)
    fps: float = Field(15.0, gt=0, description="per-source frame-rate cap")
    height: int = Field(96, ge=8, le=MAX_SIDE, description="stored frame height (resized on capture)")
    width: int = Field(96, ge=8, le=MAX_SIDE, description="stored frame width (resized on capture)")
    resize: Literal["crop", "stretch"] = "crop"
    channels: Literal[1, 3] = Field(
        3, description="3: RGB; 1: mono (gray) frames, and an encoder whose first convolution takes 1 channel"
    )
    jpeg_quality: Optional[int] = Field(None, ge=1, le=100, description="None sends raw RGB")
    novelty_threshold: Optional[float] = Field(
        None,
        ge=0,
        le=1,
        description="skip a frame whose mean |diff| (16x16 gray thumbnails, [0, 1]) to the last kept one is below "
        "this (0 = off); None = off for recordings (files, folders: every frame was wanted) and "
        "LIVE_NOVELTY_THRESHOLD (0.003) for live sources, above a still camera's noise (benchmarks/bench_novelty.py)",
    )
    camera_id_base: int = Field(0, ge=0, le=60000, description="camera id of the first source")
    start_frames: list[int] = Field(
        default_factory=list,
        description="per source, in order: frames of a recording to skip at the start (a resumed replay continues "
        "where it stopped); missing entries are 0",
    )
    lossless: Optional[bool] = Field(
        None,
        description="wait for the trainer instead of dropping frames; None = lossless when every source is finite "
        "(files, folders, globs: nothing is lost, each camera's end is sent on the wire), never for live ones",
    )
    reconnect_backoff_s: float = Field(
        0.5, gt=0, description="first wait before reopening a lost source, or retrying a live one absent at start"
    )
    reconnect_max_backoff_s: float = Field(10.0, gt=0, description="the wait doubles up to this")
    read_timeout_s: float = Field(
        5.0,
        gt=0,
        description="live sources (cameras, streams, subscriptions): no frame for this long shows the source as "
        "stale and has it reopened; also how long a stream may take to open",
    )
    loop_video: bool = Field(False, description="restart a video file or image folder at its end instead of stopping")
    shuffle: bool = Field(False, description="image folders and globs: a new seeded random order every pass")
    bit_depth: Optional[int] = Field(
        None,
        ge=8,
        le=16,
        description="image files with 16-bit samples: the bits their data really uses, unscaled (e.g. 12 for 0-4095); "
        "None = what the file says (a PGM/PPM maxval, a PNG sBIT over unscaled samples), else 16",
    )
    max_bad_frames: int = Field(
        50,
        ge=0,
        description="video files: undecodable frames in a row skipped (and counted) before the file counts as ended",
    )
    source_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="per source kind, that kind's own options (agent/robot/sources.py checks them against the kind's "
        "model at start-up), e.g. {robot_log: {topics: [/front/image_raw], clock: log}}",
    )


class WireConfig(ConfigSection):
    """ZeroMQ endpoints, limits and CURVE keys. The trainer binds `endpoint` (PULL); captures connect (PUSH).

    A receiver queues at most `recv_hwm x (40 + 3 x max_frame_side^2)` bytes per connected sender.
    Keys (agent/robot/curve.py, `byol-agent keys`): needed on any socket that binds or connects a
    non-loopback address, unless `insecure`.
    """

    endpoint: str = "tcp://127.0.0.1:5555"
    endpoints: Optional[list[str]] = Field(
        None,
        description="fleet: one PULL endpoint per trainer rank (global rank r binds endpoints[r]) and the list a "
        "capture connects to; unset: rank r binds `endpoint` with its port + r, a capture connects to `endpoint`",
    )
    publish: Optional[str] = Field(
        "tcp://127.0.0.1:5556", description="capture binds a PUB here for latest-frame subscribers (None = off)"
    )
    send_hwm: int = Field(64, ge=1, description="frames queued per capture before it drops (and counts)")
    recv_hwm: int = Field(256, ge=1)
    max_frame_side: int = Field(
        1024, ge=8, le=MAX_SIDE, description="largest frame height/width a receiver accepts; bounds message size"
    )
    secret_key: Optional[str] = Field(None, description="this process's CURVE key pair file (NAME.key_secret)")
    trainer_key: Optional[str] = Field(None, description="capture: the trainer's public key file (NAME.key)")
    publisher_key: Optional[str] = Field(
        None, description="zmq+tcp:// sources: the capture publisher's public key file"
    )
    authorized_keys: Optional[str] = Field(
        None, description="trainer / capture PUB: directory of public key files allowed to connect"
    )
    insecure: bool = Field(False, description="allow non-loopback endpoints without CURVE keys (warns at each start)")

    @field_validator("endpoint", "publish")
    @classmethod
    def _check_endpoint(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not value.startswith(("tcp://", "ipc://", "inproc://")):
            raise ValueError(f"{value!r} is not a ZeroMQ endpoint (expected tcp://HOST:PORT or ipc://PATH)")
        return value

    @field_validator("endpoints")
    @classmethod
    def _check_endpoints(cls, value: Optional[list[str]]) -> Optional[list[str]]:
        if value is not None:
            if not value:
                raise ValueError("an empty list (leave it unset for one trainer)")
            for item in value:
                cls._check_endpoint(item)
            repeated = sorted({item for item in value if value.count(item) > 1})
            if repeated:
                raise ValueError(f"{', '.join(repeated)} listed more than once (one endpoint per rank)")
        return value


class RuntimeConfig(ConfigSection):
    """The hot-swapping ONNX runtime inside the policy."""

    poll_interval_s: float = Field(0.5, gt=0)
    wait_for_first: bool = True
    providers: Literal["auto", "cpu", "cuda", "tensorrt"] = "auto"
    trt_fp16: bool = Field(False, description="TensorRT may use fp16 kernels (faster; embeddings differ slightly)")
    threads: Optional[int] = Field(None, ge=1)
    compatible_with: Optional[int] = Field(
        None, ge=1, description="serve every later version mapped into this version's embedding space (None = raw)"
    )


class RunConfig(ConfigSection):
    """`byol-agent run`: process supervision."""

    duration_s: Optional[float] = Field(None, gt=0)
    max_restarts: int = Field(3, ge=0)
    status_every_s: float = Field(1.0, gt=0)
    runtime_consumer: bool = True
