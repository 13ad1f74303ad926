"""Arguments every config-driven subcommand shares: `--config FILE` and trailing `key=value` overrides."""

from __future__ import annotations

import argparse
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Optional

from agent.core import cadence
from agent.core.config import Config, load_config
from agent.core.run_lock import PUBLISH_LOCK_NAME, DirLock, lock_directory


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML config (default: configs/default.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=1e-3")


def config_from_args(args: argparse.Namespace, flags: Optional[dict[str, Any]] = None) -> Config:
    """Load the config; `flags` maps dotted keys to CLI flag values (None = flag not given), which set
    the typed fields directly (after the `key=value` overrides; validated like everything else)."""
    given = {key: value for key, value in (flags or {}).items() if value is not None}
    return load_config(args.config, list(args.overrides), given)


def exports_in_process(cfg: Config) -> bool:
    """The trainer publishes into RUN_DIR/exports itself (either export cadence set: `cadence.scheduled`)."""
    return cadence.scheduled(cfg.export.every_steps, cfg.export.every_seconds)


def lock_export_dir(export_dir: Path, command: str) -> DirLock:
    """The export directory's publisher lock (agent/core/run_lock.py): one publisher per directory."""
    return lock_directory(export_dir, command, lock_name=PUBLISH_LOCK_NAME, what="export directory")


def lock_run_dir(run_dir: Path, command: str, cfg: Config) -> ExitStack:
    """Hold RUN_DIR's lock, and RUN_DIR/exports' too when this process publishes there in-process;
    DirectoryBusy (one line naming the holder's pid) when another live process holds either."""
    stack = ExitStack()
    try:
        stack.enter_context(lock_directory(run_dir, command))
        if exports_in_process(cfg):
            stack.enter_context(lock_export_dir(Path(run_dir) / "exports", command))
    except BaseException:
        stack.close()
        raise
    return stack
