"""`byol-agent capture`: stream frames from cameras, videos, URLs, folders or the demo scene to a trainer."""

from __future__ import annotations

import argparse
import logging
import threading
from pathlib import Path

from agent.commands._common import add_config_arguments, config_from_args
from agent.robot.capture import run_capture, stop_on_signals

_OFF = ("none", "off", "null")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        action="append",
        default=None,
        metavar="SRC",
        help="camera index, video file, rtsp/http URL, image folder or glob, robot log (MCAP, rosbag2, ROS 1 "
        ".bag; LOG#TOPIC for one topic), LeRobot dataset folder, 'demo[:SEED]', or zmq+tcp://HOST:PORT; repeatable",
    )
    parser.add_argument(
        "--endpoint",
        action="append",
        default=None,
        metavar="EP",
        help="a trainer's PULL endpoint; repeat it for each rank of a fleet trainer, frames are spread over them "
        "(default: wire.endpoints, else wire.endpoint)",
    )
    parser.add_argument("--publish", default=None, help="bind a PUB for latest-frame subscribers here, or 'none'")
    parser.add_argument("--fps", type=float, default=None, help="per-source frame-rate cap")
    parser.add_argument(
        "--lossless",
        action="store_true",
        default=None,
        help="wait for the trainer instead of dropping frames (the default when every source is a file or folder)",
    )
    parser.add_argument(
        "--pace",
        choices=("realtime", "asap"),
        default="realtime",
        help="realtime: recordings at recorded speed, fps cap applies; asap: every frame, as fast as possible",
    )
    parser.add_argument("--status-file", default=None, help="write the capture stats here as JSON about once a second")
    parser.add_argument("--history-file", default=None, help="append the capture stats here as JSON lines every 10 s")
    parser.add_argument(
        "--stats-every", type=_positive, default=10.0, metavar="S", help="seconds between stats log lines"
    )
    add_config_arguments(parser)


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def main(args: argparse.Namespace) -> int:
    flags = {"capture.sources": args.source, "wire.endpoints": args.endpoint, "capture.fps": args.fps}
    if args.publish is not None and args.publish.lower() in _OFF:
        args.overrides = [*args.overrides, "wire.publish=null"]
    else:
        flags["wire.publish"] = args.publish
    cfg = config_from_args(args, flags)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    stop_on_signals(stop)
    run_capture(
        cfg.capture,
        cfg.wire,
        stop,
        lossless=args.lossless,
        pace=args.pace,
        log_every_s=args.stats_every,
        status_path=Path(args.status_file) if args.status_file else None,
        history_path=Path(args.history_file) if args.history_file else None,
    )
    return 0
