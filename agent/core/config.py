"""One typed config for every job, built once from YAML plus `key=value` overrides.

Each component gets its own section (`cfg.capture`, `cfg.train`, ...) and is handed that section
explicitly; nothing reads a global. pydantic validates at start-up (unknown keys are rejected,
values are type- and range-checked) and `load_config` turns its report into a one-line
`ConfigError` that names the key, so a typo never reaches a training loop.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.core.errors import ConfigError
from agent.core.wire import MAX_SIDE

log = logging.getLogger(__name__)

CONFIG_DIR = Path(str(resources.files("configs")))  # package data: there in an editable install, a wheel or a copy


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True)


Pace = Literal["realtime", "asap"]
"""How recordings are played: at their recorded speed (capped at `capture.fps`), or as fast as they
can be read (offline replay; with a lossless sender, exactly as fast as the trainer consumes)."""


class CaptureConfig(_Section):
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
        50, ge=0, description="video files: undecodable frames in a row skipped (and counted) before the file counts as ended"
    )
    source_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="per source kind, that kind's own options (agent/robot/sources.py checks them against the kind's "
        "model at start-up), e.g. {robot_log: {topics: [/front/image_raw], clock: log}}",
    )


class WireConfig(_Section):
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
    publisher_key: Optional[str] = Field(None, description="zmq+tcp:// sources: the capture publisher's public key file")
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


class BufferConfig(_Section):
    """Replay buffer: preallocated uint8 frames, bounded in count and in bytes."""

    capacity_frames: int = Field(4096, ge=2)
    capacity_bytes: Optional[int] = Field(None, ge=1, description="cap on frame storage in bytes")
    policy: Literal["fifo", "reservoir", "min_redundancy", "stratified"] = "fifo"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    min_fill: int = Field(128, ge=1, description="frames stored before training starts")
    temporal_positives: bool = Field(False, description="draw the two views from two frames of one camera")
    temporal_delta_s: float = Field(0.5, gt=0, description="target time between the two frames")
    embed_batch: int = Field(64, ge=1, description="frames embedded at once for min_redundancy")
    refresh_every_steps: Optional[int] = Field(
        10, ge=1, description="min_redundancy: re-embed the embed_batch stalest frames every this many steps (None = never)"
    )


class ModelConfig(_Section):
    """The encoder being trained and its BYOL heads."""

    encoder: str = Field("resnet18", description="torchvision model name, a registered name, or package.module:factory")
    encoder_kwargs: dict[str, Any] = Field(default_factory=dict)
    stem: Literal["standard", "small", "cifar", "auto"] = Field(
        "standard",
        description="ResNet stem: standard (7x7/2 + max-pool), small (3x3/1 + max-pool), cifar (3x3/1, no pool), "
        "auto (small for a ResNet at image_size <= 64, else standard)",
    )
    hidden_layer: Union[int, str] = "avgpool"
    image_size: Union[int, tuple[int, int]] = Field(
        64, description="encoder input in px: one side (square) or [height, width], each 8-1024"
    )
    projection_size: int = Field(256, ge=1)
    projection_hidden_size: int = Field(4096, ge=1)
    init_weights: Optional[str] = Field(
        None,
        description="a state_dict file of the encoder (torchvision checkpoint, our encoder-NNNNNN.pt or checkpoint) "
        "that a new run starts from; online and target equal it at step 0",
    )

    @field_validator("image_size", mode="before")
    @classmethod
    def _check_image_size(cls, value: Any) -> Any:
        sides = list(value) if isinstance(value, (list, tuple)) else [value]
        ok = len(sides) == (2 if isinstance(value, (list, tuple)) else 1) and all(
            isinstance(s, int) and not isinstance(s, bool) and 8 <= s <= 1024 for s in sides
        )
        if not ok:
            raise ValueError(f"expected one side or [height, width], each an int from 8 to 1024 px; got {value!r}")
        return tuple(sides) if len(sides) == 2 else value

    @property
    def image_hw(self) -> tuple[int, int]:
        """`image_size` as (height, width) in px."""
        size = self.image_size
        return (size, size) if isinstance(size, int) else (size[0], size[1])


class AugmentConfig(_Section):
    """The two BYOL views, drawn per image. Defaults are the paper's (arXiv 2006.07733, table 6).

    Pairs are (view 1, view 2): the paper's views differ only in blur and solarize. What a view
    may change is what the encoder learns to ignore: when colour tells a robot's objects apart,
    set `hue`, `saturation` and `grayscale_p` to 0 (benchmarks/RESULTS.md, quality section); at
    32-64 px, blur removes most of an object's shape (CIFAR recipes drop it).
    """

    crop_scale: tuple[float, float] = Field((0.08, 1.0), description="area fraction of the random resized crop")
    crop_ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="aspect ratio range of the crop")
    flip_p: float = Field(0.5, ge=0, le=1)
    jitter_p: float = Field(0.8, ge=0, le=1, description="probability of colour jitter")
    brightness: float = Field(0.4, ge=0)
    contrast: float = Field(0.4, ge=0)
    saturation: float = Field(0.2, ge=0)
    hue: float = Field(0.1, ge=0, le=0.5)
    grayscale_p: float = Field(0.2, ge=0, le=1)
    blur_p: tuple[float, float] = Field((1.0, 0.1), description="(view 1, view 2) Gaussian blur probability")
    solarize_p: tuple[float, float] = Field((0.0, 0.2), description="(view 1, view 2) solarize probability")

    @field_validator("crop_scale", "crop_ratio")
    @classmethod
    def _check_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1]:
            raise ValueError(f"expected 0 < low <= high; got {list(value)}")
        return value

    @field_validator("crop_scale")
    @classmethod
    def _check_scale(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[1] > 1:
            raise ValueError(f"a crop covers at most the whole image (<= 1); got {list(value)}")
        return value

    @field_validator("blur_p", "solarize_p")
    @classmethod
    def _check_probabilities(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= v <= 1 for v in value):
            raise ValueError(f"probabilities must be in [0, 1]; got {list(value)}")
        return value


class TrainConfig(_Section):
    """Continual BYOL optimisation, checkpoints and metrics."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    channels_last: bool = True
    batch_size: int = Field(32, ge=2)
    optimizer: Literal["adam", "adamw", "lars", "sgd"] = "adam"
    lr: float = Field(3e-4, gt=0)
    lr_warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up from lr / steps to lr")
    weight_decay: float = Field(1e-6, ge=0)
    tau_schedule: Literal["constant", "cosine", "warmup_constant"] = "warmup_constant"
    tau_base: float = Field(0.99, ge=0, le=1)
    tau_final: float = Field(0.996, ge=0, le=1)
    tau_warmup_steps: int = Field(1000, ge=0)
    total_steps: Optional[int] = Field(None, ge=1, description="horizon of the cosine schedule")
    replay_ratio: float = Field(8.0, gt=0, description="most updates per newly ingested frame")
    max_steps: Optional[int] = Field(None, ge=1)
    checkpoint_every: int = Field(200, ge=1)
    checkpoint_every_seconds: Optional[float] = Field(
        None, gt=0, description="also checkpoint this often (single-process runs); `run` sets it to export.every_seconds"
    )
    keep_checkpoints: int = Field(3, ge=1)
    save_buffer: bool = False
    metrics_every: int = Field(10, ge=1)
    nan_tolerance: int = Field(5, ge=1, description="non-finite losses in a row before the last good state is restored")
    probe_data: Optional[str] = Field(
        "digits",
        description="'digits' (scikit-learn's bundled set), a labelled image folder, or None (off): kNN/linear "
        "probe of the encoder while training, next to its random-init twin",
    )
    probe_every: Optional[int] = Field(
        None, ge=1, description="steps between online probes; None: each checkpoint or export, and the final state"
    )
    probe_min_interval_s: float = Field(
        30.0, ge=0, description="seconds at least between two online probes (not the final one): caps their cost "
        "when checkpoints come often (benchmarks/RESULTS.md, 'Online probe')"
    )
    seed: int = 0
    threads: Optional[int] = Field(None, ge=1, description="torch intra-op threads on the CPU")
    collective_timeout_s: float = Field(
        600.0, gt=0, description="multi-rank runs: a collective that waits this long for another rank fails the run"
    )


class MetricsConfig(_Section):
    """Where the trainer's metric records go: each name a sink registered in trainer/sinks/."""

    sinks: list[str] = Field(
        default_factory=lambda: ["jsonl", "tensorboard"],
        description="metrics.jsonl (the run's record, read by `report`) and RUN_DIR/tensorboard/ event files",
    )
    images_every_steps: Optional[int] = Field(
        500, ge=1, description="steps between image grids of a few buffer frames and their two views (None = none)"
    )
    image_frames: int = Field(4, ge=1, le=32, description="frames in each image grid")


# Measured (benchmarks/bench_compat.py, tiny_cnn D=64, 12 versions 60 steps apart, RESULTS.md): maps between
# consecutive versions had held-out R² 0.973-1.000; direct maps into version 1 fell to 0.904 (digits) / 0.952
# (objects) by version 12 while a head fit on version 1 still kept >= 0.95x its accuracy through them. 0.9 lets
# that drift through and refuses a version a pinned head could no longer follow without a refit.
MIN_COMPATIBILITY_DEFAULT = 0.9
DYNAMO_MIN_OPSET = 18  # torch 2.14's dynamo ONNX exporter implements opset 18 and up


class ExportConfig(_Section):
    """ONNX export gate and publishing."""

    weights: Literal["target", "online"] = Field(
        "target",
        description="target (EMA) weights change slowly between versions, so a hot swap perturbs the policy least",
    )
    input_format: Literal["uint8_nhwc", "float_nchw"] = "uint8_nhwc"
    every_steps: Optional[int] = Field(500, ge=1, description="export once this many steps passed since the last export")
    every_seconds: Optional[float] = Field(
        None, gt=0, description="or once this long passed (a slow or loaded machine still publishes; agent.core.cadence)"
    )
    keep: int = Field(5, ge=1)
    exporter: Literal["torchscript", "dynamo"] = "torchscript"
    opset: Optional[int] = Field(
        None,
        ge=13,
        description="ONNX opset of the published file; None = the exporter's own (torchscript 17, dynamo 18). "
        "The dynamo exporter writes 18 and up only: torch's conversion down fails even on a plain conv net",
    )
    parity_atol: float = Field(1e-3, gt=0)
    collapse_std_min: float = Field(
        1e-3,
        ge=0,
        description="refuse encoders whose l2-normalised embedding std is below this (collapsed: ~0; "
        "random-init ResNet-18 avgpool features: ~4e-3, post-ReLU features sit far below 1/sqrt(D))",
    )
    verify_batch: int = Field(5, ge=2)

    @field_validator("opset")
    @classmethod
    def _check_opset(cls, value: Optional[int], info: Any) -> Optional[int]:
        if value is not None and value < DYNAMO_MIN_OPSET and info.data.get("exporter") == "dynamo":
            raise ValueError(
                f"export.opset={value} cannot be written by export.exporter=dynamo (its lowest opset is "
                f"{DYNAMO_MIN_OPSET}); set export.opset={DYNAMO_MIN_OPSET} or higher, or export.exporter=torchscript"
            )
        return value

    probe_gate: Optional[str] = Field(
        None, description="'digits' or an image folder: publish only if kNN/linear probe on it does not regress (None = off)"
    )
    probe_tolerance: float = Field(0.01, ge=0, le=1, description="accuracy drop the probe gate tolerates")
    calibration_frames: int = Field(
        1024,
        ge=0,
        description="replay-buffer frames kept as calibration.npy for compatibility maps, gathered over the first "
        "exports (0 = no maps); 1024 not 256: fit on ~800-900 frames a fixed head kept >= 0.95x, on 256 not "
        "(benchmarks/RESULTS.md, 'Backward-compatible embeddings')",
    )
    compat_map: Literal["ridge", "procrustes"] = Field(
        "ridge", description="map from each version's embeddings to the previous one's (benchmarks/bench_compat.py)"
    )
    compat_ridge: float = Field(1e-3, gt=0, description="ridge strength, relative to the embeddings' mean variance")
    torch_weights: bool = Field(
        False, description="each version also gets encoder-NNNNNN.pt, the encoder's state_dict for PyTorch policies"
    )
    min_compatibility: Optional[float] = Field(
        MIN_COMPATIBILITY_DEFAULT,
        le=1,
        description="drift gate: refuse a version whose map back to the previous explains less R² than this "
        "on held-out calibration frames (None = off)",
    )


class RuntimeConfig(_Section):
    """The hot-swapping ONNX runtime inside the policy."""

    poll_interval_s: float = Field(0.5, gt=0)
    wait_for_first: bool = True
    providers: Literal["auto", "cpu", "cuda", "tensorrt"] = "auto"
    trt_fp16: bool = Field(False, description="TensorRT may use fp16 kernels (faster; embeddings differ slightly)")
    threads: Optional[int] = Field(None, ge=1)
    compatible_with: Optional[int] = Field(
        None, ge=1, description="serve every later version mapped into this version's embedding space (None = raw)"
    )


class EvalConfig(_Section):
    """Frozen-encoder evaluation: kNN and linear probe."""

    k: int = Field(20, ge=1)
    test_fraction: float = Field(0.3, gt=0, lt=1)
    max_images: int = Field(2000, ge=10)


class RunConfig(_Section):
    """`byol-agent run`: process supervision."""

    duration_s: Optional[float] = Field(None, gt=0)
    max_restarts: int = Field(3, ge=0)
    status_every_s: float = Field(1.0, gt=0)
    runtime_consumer: bool = True


class Config(_Section):
    """Everything one job needs; each component receives only its own section."""

    capture: CaptureConfig = CaptureConfig()
    wire: WireConfig = WireConfig()
    buffer: BufferConfig = BufferConfig()
    model: ModelConfig = ModelConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()
    metrics: MetricsConfig = MetricsConfig()
    export: ExportConfig = ExportConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    eval: EvalConfig = EvalConfig()
    run: RunConfig = RunConfig()

    @model_validator(mode="after")
    def _check_cross_fields(self) -> "Config":
        if self.buffer.min_fill > self.buffer.capacity_frames:
            raise ValueError(
                f"buffer.min_fill ({self.buffer.min_fill}) exceeds buffer.capacity_frames ({self.buffer.capacity_frames})"
            )
        if self.train.batch_size > self.buffer.capacity_frames:
            raise ValueError("train.batch_size exceeds buffer.capacity_frames")
        if max(self.capture.height, self.capture.width) > self.wire.max_frame_side:
            raise ValueError(
                f"capture size {self.capture.height}x{self.capture.width} exceeds wire.max_frame_side "
                f"({self.wire.max_frame_side}): receivers would refuse every frame"
            )
        return self


def _yaml_where(exc: yaml.YAMLError) -> str:
    """" at line L, column C: what is wrong" (1-based, where the parser stopped), from a PyYAML error."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{where}: {problem}"


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value (e.g. train.lr=1e-3)")
    key, raw = item.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return path, value


def _set_path(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key {'.'.join(path)!r}: {part!r} is not a section")
        node = child
    node[path[-1]] = value


def _format_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        section = first["loc"][:-1]
        allowed = _allowed_keys(section)
        return f"unknown config key {key!r}; allowed here: {', '.join(allowed)}"
    msg = first["msg"].removeprefix("Value error, ")
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"bad config value for {key!r}: {msg}{more}"


def _allowed_keys(section: tuple) -> list[str]:
    model: type[BaseModel] = Config
    for part in section:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            break
        model = field.annotation
    return sorted(model.model_fields)


def shipped_configs() -> list[str]:
    """Names `--config` accepts for the configs installed with the package (default, robot-resnet18, ...)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(path: Optional[Union[str, Path]]) -> Path:
    """`path` as given when it names a file; a bare shipped name ("default", "robot-resnet18") its installed
    YAML, from any working directory; None the shipped default. A missing file stays as given (the caller
    reports it)."""
    if path is None:
        return CONFIG_DIR / "default.yaml"
    path = Path(path)
    if not path.exists() and path.parent == Path(".") and path.stem in shipped_configs() and path.suffix in ("", ".yaml"):
        return CONFIG_DIR / f"{path.stem}.yaml"
    return path


def _drop_other_encoders_kwargs(tree: dict, file_encoder: Any, changed: list[list[str]]) -> None:
    """An override that names another `model.encoder` than the file's, and no `model.encoder_kwargs`, drops the
    file's kwargs: they were written for the file's encoder (default.yaml's tiny_cnn `width: 16` is no
    ResNet argument), as choosing another kind of thing resets its options in lerobot's configs."""
    model = tree.get("model")
    if not isinstance(model, dict) or model.get("encoder") == file_encoder or "encoder_kwargs" not in model:
        return
    if ["model", "encoder"] not in changed or any(p[:2] == ["model", "encoder_kwargs"] for p in changed):
        return
    dropped = model.pop("encoder_kwargs")
    if dropped:
        log.info("model.encoder=%s: the config file's encoder_kwargs %s (for %s) are not used", model["encoder"],
                 dropped, file_encoder)


def load_config(
    path: Optional[Union[str, Path]] = None,
    overrides: Optional[list[str]] = None,
    values: Optional[dict[str, Any]] = None,
) -> Config:
    """Build the config from a YAML file (default: configs/default.yaml) and `a.b=value` overrides.

    `values` sets dotted keys to typed values after the overrides (CLI flags: a path with a quote or
    a colon in it stays a string, nothing is re-parsed as YAML). Keys a file leaves out take the
    built-in defaults of the sections above (see README, "Config
    reference"). An empty file is an error rather than a silent run on those defaults: omit
    `--config` to get configs/default.yaml. Raises ConfigError with a one-line message naming the
    offending file or key.
    """
    path = resolve_config_path(path)
    where = f"config file {str(path)!r}"
    try:
        text = path.read_text(encoding="utf-8")
        tree = yaml.safe_load(text)
    except FileNotFoundError:
        raise ConfigError(f"{where} does not exist (shipped configs: {', '.join(shipped_configs())})") from None
    except IsADirectoryError:
        raise ConfigError(f"{where} is a directory; pass a YAML file such as configs/default.yaml") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not a text YAML file (it holds bytes that are not UTF-8)") from None
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML{_yaml_where(exc)}") from None
    if tree is None:
        raise ConfigError(f"{where} is empty; omit --config to use the shipped configs/default.yaml")
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
    file_encoder = tree.get("model", {}).get("encoder") if isinstance(tree.get("model"), dict) else None
    changed: list[list[str]] = []
    for item in overrides or []:
        key_path, value = _parse_override(item)
        _set_path(tree, key_path, value)
        changed.append(key_path)
    for key, value in (values or {}).items():  # typed values (CLI flags): set as they are, never re-parsed
        _set_path(tree, key.split("."), value)
        changed.append(key.split("."))
    _drop_other_encoders_kwargs(tree, file_encoder, changed)
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None


def dump_config(cfg: Config, path: Union[str, Path]) -> None:
    """Write the resolved config next to a run, so the run can be read back and reproduced."""
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
