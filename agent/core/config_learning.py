"""The config sections of the learner and what publishes it: buffer, model, augment, train, metrics,
export and eval (the robot side's are in agent/core/config_robot.py; the root `Config` in config.py)."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import Field, field_validator

from agent.core.config_robot import ConfigSection


class BufferConfig(ConfigSection):
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
        10,
        ge=1,
        description="min_redundancy: re-embed the embed_batch stalest frames every this many steps (None = never)",
    )


class ModelConfig(ConfigSection):
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


class AugmentConfig(ConfigSection):
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


class TrainConfig(ConfigSection):
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
        None,
        gt=0,
        description="also checkpoint this often (single-process runs); `run` sets it to export.every_seconds",
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
        30.0,
        ge=0,
        description="seconds at least between two online probes (not the final one): caps their cost "
        "when checkpoints come often (benchmarks/RESULTS.md, 'Online probe')",
    )
    warn_knn_drop: float = Field(
        0.02,
        gt=0,
        description="warn when the online probe's kNN falls this far below its best (trainer/health.py; the "
        "long-run goal, benchmarks/bench_longrun.py)",
    )
    warn_std_fraction: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="warn when the embedding std falls below this fraction of its peak (trainer/health.py)",
    )
    compat_distill: float = Field(
        0.0,
        ge=0,
        description="weight of a term keeping the encoder linearly mappable into the first published "
        "version's space (trainer/snapshot_distill.py; pinned policy heads), 0 = off (benchmarks/RESULTS.md, "
        "'Pinned swaps on real photos')",
    )
    distill_snapshot: Literal["first_published", "session_start"] = Field(
        "first_published",
        description="what train.compat_distill distils towards: the first version this session publishes (pinned "
        "policy heads), or the encoder this session resumed from (against forgetting: CaSSLe's frozen model of "
        "the previous task, a robot restarted in the next room; nothing on a fresh run)",
    )
    seed: int = 0
    threads: Optional[int] = Field(None, ge=1, description="torch intra-op threads on the CPU")
    collective_timeout_s: float = Field(
        600.0, gt=0, description="multi-rank runs: a collective that waits this long for another rank fails the run"
    )


class MetricsConfig(ConfigSection):
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


class ExportConfig(ConfigSection):
    """ONNX export gate and publishing."""

    weights: Literal["target", "online"] = Field(
        "target",
        description="target (EMA) weights change slowly between versions, so a hot swap perturbs the policy least",
    )
    input_format: Literal["uint8_nhwc", "float_nchw"] = "uint8_nhwc"
    every_steps: Optional[int] = Field(
        500, ge=1, description="export once this many steps passed since the last export"
    )
    every_seconds: Optional[float] = Field(
        None,
        gt=0,
        description="or once this long passed (a slow or loaded machine still publishes; agent.core.cadence)",
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
        None,
        description="'digits' or an image folder: publish only if kNN/linear probe on it does not regress (None = off)",
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


class EvalConfig(ConfigSection):
    """Frozen-encoder evaluation: kNN and linear probe."""

    k: int = Field(20, ge=1)
    test_fraction: float = Field(0.3, gt=0, lt=1)
    max_images: int = Field(2000, ge=10)
