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
from typing import Any, Optional, Union

import yaml
from pydantic import BaseModel, ValidationError, model_validator

from agent.core.config_learning import (
    DYNAMO_MIN_OPSET,
    MIN_COMPATIBILITY_DEFAULT,
    AugmentConfig,
    BufferConfig,
    EvalConfig,
    ExportConfig,
    MetricsConfig,
    ModelConfig,
    TrainConfig,
)
from agent.core.config_robot import CaptureConfig, ConfigSection, Pace, RunConfig, RuntimeConfig, WireConfig
from agent.core.errors import ConfigError

# The sections are defined beside this module (by side) and named here too: `agent.core.config` is where the
# layers above import every section from (about 40 modules of agent/, trainer/, export/, tests, benchmarks).
__all__ = [
    "CONFIG_DIR",
    "DYNAMO_MIN_OPSET",
    "MIN_COMPATIBILITY_DEFAULT",
    "AugmentConfig",
    "BufferConfig",
    "CaptureConfig",
    "Config",
    "ConfigSection",
    "EvalConfig",
    "ExportConfig",
    "MetricsConfig",
    "ModelConfig",
    "Pace",
    "RunConfig",
    "RuntimeConfig",
    "TrainConfig",
    "WireConfig",
    "dump_config",
    "load_config",
    "resolve_config_path",
    "shipped_configs",
]

log = logging.getLogger(__name__)

CONFIG_DIR = Path(str(resources.files("configs")))  # package data: there in an editable install, a wheel or a copy


class Config(ConfigSection):
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
                f"buffer.min_fill ({self.buffer.min_fill}) exceeds "
                f"buffer.capacity_frames ({self.buffer.capacity_frames})"
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
    """ " at line L, column C: what is wrong" (1-based, where the parser stopped), from a PyYAML error."""
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
    if (
        not path.exists()
        and path.parent == Path(".")
        and path.stem in shipped_configs()
        and path.suffix in ("", ".yaml")
    ):
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
        log.info(
            "model.encoder=%s: the config file's encoder_kwargs %s (for %s) are not used",
            model["encoder"],
            dropped,
            file_encoder,
        )


def load_config(
    path: Optional[Union[str, Path]] = None,
    overrides: Optional[list[str]] = None,
    values: Optional[dict[str, Any]] = None,
) -> Config:
    """Build the config from a YAML file (default: configs/default.yaml) and `a.b=value` overrides.

    `values` sets dotted keys to typed values after the overrides (CLI flags: a path with a quote or
    a colon in it stays a string, nothing is re-parsed as YAML). Keys a file leaves out take the
    built-in defaults of the sections (config_robot.py, config_learning.py; README, "Config
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
