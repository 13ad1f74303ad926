"""`byol-agent`: one console command, one thin subcommand module per job (agent/commands/).

Each subcommand module offers `add_arguments(parser)` and `main(args) -> int`; the work lives in
the library. User-facing failures (`ByolAgentError`) print as one line, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional

from agent.errors import ByolAgentError

COMMANDS = {
    "run": "capture, train, export and a runtime consumer as supervised processes (the main job)",
    "capture": "stream frames from a camera, video, URL, folder or the demo scene over ZeroMQ",
    "train": "continual BYOL trainer fed over ZeroMQ, with checkpoints and periodic export",
    "replay": "train on recorded video through the same pipeline, offline",
    "export": "export a checkpoint's encoder to a verified, versioned ONNX file",
    "runtime": "toy policy loop: hot-swapping ONNX encoder over a frame source",
    "eval": "kNN and linear-probe accuracy of an exported encoder vs a random-init one",
    "report": "PNG plots and a markdown summary of a run directory",
    "keys": "make a CURVE key pair that authenticates and encrypts the wire between machines",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="byol-agent", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"agent.commands.{name}")
        child = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(child)
        child.set_defaults(_main=module.main)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse cannot take positionals after options; accept `key=value` overrides anywhere.
    unknown = [item for item in extra if "=" not in item or item.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = [*getattr(args, "overrides", []), *extra]
    try:
        return int(args._main(args) or 0)
    except ByolAgentError as exc:
        print(f"byol-agent {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
