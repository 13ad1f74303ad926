"""`byol-agent export`: a run's newest checkpoint → verified, versioned ONNX in an export directory.

Once by default (exit 2 with the reason if the parity or collapse gate refuses it), or with
`--watch` following the checkpoints until SIGINT/SIGTERM, then exporting the final one (how
`byol-agent run` uses it). The architecture comes from the checkpoint; export settings from
`--config` / overrides.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from agent.commands._common import add_config_arguments, config_from_args, lock_export_dir
from agent.core.interrupts import StopFlag


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", required=True, help="training run directory (reads RUN_DIR/checkpoints)")
    parser.add_argument("--out", required=True, help="export directory (encoder-NNNNNN.onnx/.json, LATEST)")
    parser.add_argument(
        "--weights", choices=("target", "online"), default=None, help="default: export.weights (target)"
    )
    parser.add_argument("--watch", action="store_true", help="export each new checkpoint until stopped, then the last")
    parser.add_argument("--poll", type=float, default=2.0, help="--watch: seconds between checkpoint checks")
    add_config_arguments(parser)


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, {"export.weights": args.weights})
    run_dir, out = Path(args.run_dir), Path(args.out)
    # --watch: from here SIGINT/SIGTERM only set the event, so a stop during start-up still ends
    # with the final export; a one-shot export is simply interrupted (exit 130).
    stop = StopFlag() if args.watch else None
    with lock_export_dir(out, "export"):  # one publisher per export directory
        from export.from_checkpoint import export_checkpoint, watch  # torch loads after the arguments are known good
        from export.publish import Publisher

        publisher = Publisher(out, cfg.export.keep)
        if stop is None:
            step, version = export_checkpoint(run_dir, publisher, cfg.export, cfg.model, cfg.eval)
            print(f"published version {version} (step {step}) to {out}")
            return 0
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from trainer.metrics import MetricSinks

        status = run_dir / "status-exporter.json"
        sinks = MetricSinks(run_dir, cfg.metrics.sinks)  # each export's version and drift, next to the trainer's
        try:
            watch(
                run_dir,
                publisher,
                cfg.export,
                stop.event,
                poll_s=args.poll,
                status_path=status,
                operator_model=cfg.model,
                eval_cfg=cfg.eval,
                record=sinks.log,
            )
        finally:
            sinks.close()
    return 0
