"""`byol-agent runtime`: a toy policy loop on the hot-swapping ONNX encoder, over any frame source.

Prints a line per second (version, p50/p99 latency, swaps, failures); with `--status-dir` also
writes `status-runtime.json` there for the `run` supervisor and appends swaps and latency
percentiles to `runtime.jsonl` there for `byol-agent report`.

`--duration S` bounds the whole command, the wait for a first encoder included: nothing published
within S seconds is a one-line error (exit 2), as is an export directory that does not exist (a
mistyped path is never waited for; an existing, still empty one is).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from agent.commands._common import add_config_arguments, config_from_args
from agent.core.errors import ModelFileError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--export-dir", required=True, help="directory the exporter publishes into")
    parser.add_argument(
        "--source",
        required=True,
        help="camera index, video, URL, image folder/glob, robot log "
        "(LOG#TOPIC), LeRobot dataset folder, 'demo' or zmq+tcp://...",
    )
    parser.add_argument(
        "--duration",
        type=_positive,
        default=None,
        help="stop after this many seconds, the wait for a first encoder included (default: until Ctrl-C)",
    )
    parser.add_argument("--no-wait", action="store_true", help="fail at once if nothing is published yet")
    parser.add_argument(
        "--compatible-with",
        type=int,
        default=None,
        metavar="VERSION",
        help="serve later versions mapped into this version's embedding space (runtime.compatible_with)",
    )
    parser.add_argument(
        "--status-dir",
        default=None,
        help="write status-runtime.json here (atomically, each second) and append runtime.jsonl",
    )
    add_config_arguments(parser)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def main(args: argparse.Namespace) -> int:
    start = time.monotonic()
    cfg = config_from_args(args)
    export_dir = Path(args.export_dir)
    if not export_dir.is_dir():
        what = "is not a directory" if export_dir.exists() else "does not exist"
        raise ModelFileError(f"export directory {export_dir} {what} (an exporter's --out, e.g. RUN_DIR/exports)")
    from agent.core.interrupts import StopFlag
    from agent.robot.policy_loop import run_policy_loop
    from agent.robot.runtime import HotEncoder
    from agent.robot.sources import open_source

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    source = open_source(args.source, cfg.capture, cfg.wire)
    rc = cfg.runtime
    if not args.no_wait and rc.wait_for_first:
        upto = "" if args.duration is None else f" (up to --duration {args.duration:g} s)"
        print(f"waiting for the first encoder in {args.export_dir}{upto}", flush=True)
    waited = None if args.duration is None else max(0.0, args.duration - (time.monotonic() - start))
    try:
        encoder = HotEncoder(
            args.export_dir,
            poll_interval_s=rc.poll_interval_s,
            wait=rc.wait_for_first and not args.no_wait,
            timeout_s=waited,
            providers=rc.providers,
            threads=rc.threads,
            trt_fp16=rc.trt_fp16,
            compatible_with=args.compatible_with if args.compatible_with is not None else rc.compatible_with,
        )
    except KeyboardInterrupt:  # stopped (Ctrl-C or the run supervisor) before anything was published
        print("stopped before the first encoder was published", flush=True)
        return 0
    with encoder:
        stop = StopFlag()  # from here on SIGINT/SIGTERM end the loop cleanly
        pinned = f", in version {encoder.compatible_with}'s space" if encoder.compatible_with is not None else ""
        print(
            f"serving version {encoder.version} (D={encoder.output_dim}{pinned}) on {', '.join(encoder.providers)}",
            flush=True,
        )
        status = Path(args.status_dir) / "status-runtime.json" if args.status_dir else None
        left = None if args.duration is None else max(0.0, args.duration - (time.monotonic() - start))
        history = Path(args.status_dir) / "runtime.jsonl" if args.status_dir else None
        run_policy_loop(
            encoder,
            source,
            fps=cfg.capture.fps,
            stop=stop.event,
            duration_s=left,
            status_path=status,
            history_path=history,
        )
    return 0
