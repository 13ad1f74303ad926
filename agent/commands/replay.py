"""`byol-agent replay`: train on recorded video through the same capture → wire → trainer path."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from agent.commands._common import config_from_args, lock_run_dir
from agent.commands.train import configure_logging
from agent.core.config import Pace
from agent.core.interrupts import StopFlag

_OVERRIDE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+=")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "items",
        nargs="+",
        metavar="RECORDING|key=value",
        help="recordings (videos, robot logs: drive.mcap, LOG#TOPIC, a rosbag2 folder, run.bag; image folders), then "
        "config overrides, in one run: `replay [options] a.mp4 drive.mcap train.lr=1e-3`",
    )
    parser.add_argument(
        "--run-dir", required=True, help="checkpoints, metrics.jsonl and exports go here; a rerun resumes"
    )
    parser.add_argument(
        "--pace",
        choices=("realtime", "asap", "timestamps"),
        default="asap",
        help="realtime: play at recorded speed ('timestamps' is its older name); asap: as fast as training "
        "consumes (lossless)",
    )
    parser.add_argument("--max-steps", type=int, default=None, help="stop at this total step count (across resumes)")
    parser.add_argument("--config", default=None, help="YAML config (default: configs/default.yaml)")


def split_items(items: list[str]) -> tuple[list[str], list[str]]:
    """Recordings vs `section.key=value` overrides (an existing file is always a recording)."""
    videos = [item for item in items if Path(item).exists() or not _OVERRIDE.match(item)]
    overrides = [item for item in items if item not in videos]
    return videos, overrides


def main(args: argparse.Namespace) -> int:
    videos, overrides = split_items(args.items)
    args.overrides = [*overrides, *args.overrides]  # overrides after the options arrive via agent.cli
    cfg = config_from_args(args, {"train.max_steps": args.max_steps})
    stop = StopFlag()
    configure_logging()
    run_dir = Path(args.run_dir)
    from agent.replay import check_recordings, replay

    counts = check_recordings(videos, cfg.capture)  # a bad recording is refused before the run dir is even made
    with lock_run_dir(run_dir, "replay", cfg):
        pace: Pace = "realtime" if args.pace == "timestamps" else args.pace
        return replay(cfg, videos, run_dir, pace=pace, stop=stop.event, frame_counts=counts)
