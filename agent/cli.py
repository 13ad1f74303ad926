"""`byol-agent`: one console command, one thin subcommand module per job (agent/commands/).

Each subcommand module offers `add_arguments(parser)` and `main(args) -> int`; the work lives in
the library. User-facing failures (`ByolAgentError`) print as one line, never a traceback.

Start-up stays light and interruptible: only the chosen subcommand's module is imported (each
keeps torch, matplotlib, sklearn and onnx to the code paths that use them), and a Ctrl-C at any
moment before a subcommand installs its own stop handling ends the process with exit 130 and no
traceback (after it, the subcommand stops cleanly: exit 0).

Process output is advisory: when stdout/stderr is a log file on a full disk, a failed write is
dropped instead of raising inside whatever loop printed it, and a file-size limit (SIGXFSZ) makes
writes fail with EFBIG instead of killing the process.
"""

from __future__ import annotations

import argparse
import importlib
import io
import signal
import sys
from typing import Any, Optional, TextIO

from agent.core.interrupts import catch_early_interrupts

COMMANDS = {
    "run": "capture, train, export and a runtime consumer as supervised processes (the main job)",
    "capture": "stream frames from a camera, video, URL, folder or the demo scene over ZeroMQ",
    "train": "continual BYOL trainer fed over ZeroMQ, with checkpoints and periodic export",
    "replay": "train on recorded video through the same pipeline, offline",
    "export": "export a checkpoint's encoder to a verified, versioned ONNX file",
    "runtime": "toy policy loop: hot-swapping ONNX encoder over a frame source",
    "rollback": "point an export directory's LATEST back at an earlier verified version",
    "eval": "kNN and linear-probe accuracy of an exported encoder vs a random-init one",
    "report": "PNG plots and a markdown summary of a run directory",
    "keys": "make a CURVE key pair that authenticates and encrypts the wire between machines",
}


class _TolerantOutput(io.TextIOBase):
    """Wraps stdout/stderr: a write or flush that fails with OSError (disk full) is dropped and counted."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.dropped = 0

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError:
            self.dropped += 1
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError:
            self.dropped += 1

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    def __getattr__(self, name: str) -> Any:  # encoding, errors, buffer, ...
        return getattr(self._stream, name)


def _harden_process_output() -> None:
    if not isinstance(sys.stdout, _TolerantOutput) and sys.stdout is not None:
        sys.stdout = _TolerantOutput(sys.stdout)
    if not isinstance(sys.stderr, _TolerantOutput) and sys.stderr is not None:
        sys.stderr = _TolerantOutput(sys.stderr)
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The full parser (`command=None`), or one that imports only `command`'s module ("" imports none:
    enough for `--help` and for argparse's own errors)."""
    parser = argparse.ArgumentParser(prog="byol-agent", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        child = sub.add_parser(name, help=help_text, description=help_text)
        if command is None or name == command:
            module = importlib.import_module(f"agent.commands.{name}")
            module.add_arguments(child)
            child.set_defaults(_main=module.main)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    try:
        # A supervisor (agent/supervisor.py) starts its children with SIGINT blocked, so that a stop
        # during interpreter start-up waits for us: delivered here, it ends in the `except` below.
        if argv is None:  # the process's entry point: a Ctrl-C while starting is never lost (agent/core/interrupts.py)
            catch_early_interrupts()
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C while importing or parsing, or in a command without its own stop
        if argv is None:  # the process is ending anyway: a second Ctrl-C must not interrupt its shutdown
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        return 130


def _main(argv: Optional[list[str]]) -> int:
    if argv is None:  # the process's entry point (console script or python -m), not a caller's function call
        _harden_process_output()
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(words[0] if words and words[0] in COMMANDS else "")
    args, extra = parser.parse_known_args(argv)
    # argparse cannot take positionals after options; accept `key=value` overrides anywhere.
    unknown = [item for item in extra if "=" not in item or item.startswith("-")]
    if unknown:  # the subcommand's usage, not the top level's: `run --duraton 5` is a `run` mistake
        subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
        subcommands.choices[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = [*getattr(args, "overrides", []), *extra]
    if argv is None:
        _leave_inherited_realtime(args.command)
    from agent.core.errors import ByolAgentError

    try:
        return int(args._main(args) or 0)
    except ByolAgentError as exc:
        print(f"byol-agent {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _leave_inherited_realtime(command: str) -> None:
    """One line when the process inherited real-time scheduling; background jobs leave it (agent/core/scheduling.py)."""
    from agent.core.scheduling import leave_realtime, realtime_policy

    policy = realtime_policy()
    if policy is None:
        return
    if command == "runtime":
        print(f"byol-agent runtime: note: running at real-time scheduling ({policy}), as started", file=sys.stderr)
        return
    try:
        leave_realtime()
    except OSError as exc:
        print(
            f"byol-agent {command}: warning: started at real-time scheduling ({policy}) and could not leave it "
            f"({exc.strerror}); its compute threads can starve the robot's other processes",
            file=sys.stderr,
        )
        return
    print(
        f"byol-agent {command}: started at real-time scheduling ({policy}), inherited from what started it; "
        "running at SCHED_OTHER instead (a background job must not starve the robot's processes)",
        file=sys.stderr,
    )


if __name__ == "__main__":
    sys.exit(main())
