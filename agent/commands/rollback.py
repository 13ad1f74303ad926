"""`byol-agent rollback`: point the export directory's LATEST back at an earlier verified version.

A running `byol-agent runtime` / `HotEncoder` follows within one poll interval; the exporter's next
version is published (and pointed at) as usual. Malformed requests change nothing and print one line.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--export-dir", required=True, help="directory the exporter publishes into")
    parser.add_argument(
        "--to",
        type=int,
        default=None,
        metavar="VERSION",
        help="version to serve (default: the newest one below what LATEST names)",
    )


def main(args: argparse.Namespace) -> int:
    from export.publish import rollback

    before, after = rollback(args.export_dir, args.to)
    print(f"LATEST in {args.export_dir} now names version {after} (was {before})", flush=True)
    return 0
