"""`byol-agent runtime`: a toy policy loop on the hot-swapping ONNX encoder, over any frame source.

Prints a line per second (version, p50/p99 latency, swaps, failures); with `--status-dir` also
writes `status-runtime.json` there for the `run` supervisor.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from agent.commands._common import add_config_arguments, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--export-dir", required=True, help="directory the exporter publishes into")
    parser.add_argument("--source", required=True, help="camera index, video, URL, image folder/glob, 'demo' or zmq+tcp://...")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: until Ctrl-C)")
    parser.add_argument("--no-wait", action="store_true", help="fail at once if nothing is published yet")
    parser.add_argument("--compatible-with", type=int, default=None, metavar="VERSION",
                        help="serve later versions mapped into this version's embedding space (runtime.compatible_with)")
    parser.add_argument("--status-dir", default=None, help="write status-runtime.json here (atomically, each second)")
    add_config_arguments(parser)


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    from agent.robot.policy_loop import run_policy_loop
    from agent.robot.runtime import HotEncoder
    from agent.robot.sources import open_source
    from agent.supervisor import StopFlag

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    source = open_source(args.source, cfg.capture, cfg.wire)
    rc = cfg.runtime
    if not args.no_wait and rc.wait_for_first:
        print(f"waiting for the first encoder in {args.export_dir}", flush=True)
    try:
        encoder = HotEncoder(
            args.export_dir,
            poll_interval_s=rc.poll_interval_s,
            wait=rc.wait_for_first and not args.no_wait,
            providers=rc.providers,
            threads=rc.threads,
            compatible_with=args.compatible_with if args.compatible_with is not None else rc.compatible_with,
        )
    except KeyboardInterrupt:  # stopped (Ctrl-C or the run supervisor) before anything was published
        print("stopped before the first encoder was published", flush=True)
        return 0
    with encoder:
        stop = StopFlag()  # from here on SIGINT/SIGTERM end the loop cleanly
        pinned = f", in version {encoder.compatible_with}'s space" if encoder.compatible_with is not None else ""
        print(f"serving version {encoder.version} (D={encoder.output_dim}{pinned}) on {', '.join(encoder.providers)}", flush=True)
        status = Path(args.status_dir) / "status-runtime.json" if args.status_dir else None
        run_policy_loop(encoder, source, fps=cfg.capture.fps, stop=stop.event, duration_s=args.duration, status_path=status)
    return 0
