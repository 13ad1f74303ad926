"""Arguments every config-driven subcommand shares: `--config FILE` and trailing `key=value` overrides."""

from __future__ import annotations

import argparse
from typing import Any, Optional

from agent.core.config import Config, load_config


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML config (default: configs/default.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=1e-3")


def config_from_args(args: argparse.Namespace, flags: Optional[dict[str, Any]] = None) -> Config:
    """Load the config; `flags` maps dotted keys to CLI flag values (None = flag not given), which set
    the typed fields directly (after the `key=value` overrides; validated like everything else)."""
    given = {key: value for key, value in (flags or {}).items() if value is not None}
    return load_config(args.config, list(args.overrides), given)
