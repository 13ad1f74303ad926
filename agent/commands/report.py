"""`byol-agent report RUN_DIR`: summary.md, overview.png and detailed PNGs of a run (metrics.jsonl, capture.jsonl,
runtime.jsonl)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory holding metrics.jsonl")
    parser.add_argument("--out", default=None, help="output folder (default RUN_DIR/report)")


def main(args: argparse.Namespace) -> int:
    from trainer.report import write_report  # numpy (and matplotlib, once plotting) load after parsing

    report = write_report(args.run_dir, args.out)
    for path in report.plots + [report.summary]:
        print(path)
    if report.missing:
        print(f"not recorded, so not plotted: {', '.join(report.missing)}")
    return 0
