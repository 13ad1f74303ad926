"""Arguments every config-driven subcommand shares: `--config FILE` and trailing `key=value` overrides."""

from __future__ import annotations

import argparse
from typing import Any, Optional

from agent.core.config import Config, load_config
from agent.core.errors import ConfigError


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML config (default: configs/default.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=1e-3")


def config_from_args(args: argparse.Namespace, flags: Optional[dict[str, Any]] = None) -> Config:
    """Load the config; `flags` maps dotted keys to CLI flag values (None = flag not given), which set
    the typed fields directly (after the `key=value` overrides; validated like everything else)."""
    given = {key: value for key, value in (flags or {}).items() if value is not None}
    return load_config(args.config, list(args.overrides), given)


def refuse_mono_pipeline(cfg: Config) -> None:
    """ConfigError for `capture.channels: 1` in the live pipeline (capture, train, run, replay).

    A mono config reaches the learner (`build_learner(..., channels=1)`) and export (1-channel
    uint8 NHWC graphs), but capture, the wire, the replay buffer and the training loop still carry
    RGB frames: refused here rather than training an RGB encoder under a mono config.
    """
    if cfg.capture.channels != 3:
        raise ConfigError(
            f"capture.channels={cfg.capture.channels} is not carried by capture and the training loop yet "
            "(only the learner API and export take mono); use capture.channels=3"
        )
