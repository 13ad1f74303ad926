"""`byol-agent train`: the continual BYOL trainer, fed over ZeroMQ (the work is in trainer.continual)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from agent.commands._common import add_config_arguments, config_from_args, lock_run_dir
from agent.supervisor import StopFlag
from agent.robot.transport import validate_endpoint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", default=None, help="ZeroMQ endpoint to bind for frames (default: config wire.endpoint)")
    parser.add_argument("--run-dir", required=True, help="checkpoints, metrics.jsonl and exports go here; a rerun resumes")
    parser.add_argument("--max-steps", type=int, default=None, help="stop at this total step count (across resumes)")
    add_config_arguments(parser)


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_dir_config_is_input(config: str | None, run_dir: Path) -> bool:
    """True when --config is the run's own config.yaml (as `byol-agent run` passes it): leave it be."""
    return config is not None and Path(config).resolve() == (run_dir / "config.yaml").resolve()


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, {"wire.endpoint": args.endpoint, "train.max_steps": args.max_steps})
    validate_endpoint(cfg.wire.endpoint, bind=True)
    stop = StopFlag()  # SIGINT/SIGTERM only set the event; the loop checkpoints and exits
    configure_logging()
    run_dir = Path(args.run_dir)
    with lock_run_dir(run_dir, "train", cfg):  # under `byol-agent run`: the lock its supervisor handed down
        from agent.pipeline import build_trainer  # torch loads after the arguments are known good
        from export.onnx_export import check_exportable

        # an encoder nothing can publish fails now, not after hours of training
        check_exportable(cfg.model, cfg.export, cfg.capture.channels)
        trainer = build_trainer(cfg, run_dir, write_config=not run_dir_config_is_input(args.config, run_dir))
        return trainer.run(stop.event)
