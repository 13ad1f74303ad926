"""`byol-agent train --nproc N`: the same command once per rank on this machine, under torchrun.

`run_ranks(words, nproc)` runs `python -m torch.distributed.run --standalone --nproc-per-node N -m
agent.cli WORDS` and returns its exit status (a signal's as 128 + its number). The caller holds the
run directory's locks meanwhile (agent/commands/train.py); torchrun closes inherited descriptors, so
the ranks hold them through this process, named in their environment (`run_lock.holder_env`).

torchrun runs in a session of its own, so a Ctrl-C in the terminal reaches this process alone, which
passes SIGINT/SIGTERM on to the ranks themselves: they agree to stop, write one final checkpoint and
exit 0, and so does torchrun. (Signalled itself, torchrun would report the stop as a failure and
kill ranks still checkpointing after 30 s.) Where no rank can be found (no /proc, none started yet)
the signal goes to torchrun. torchrun is terminated if this process dies (Linux).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType
from typing import Optional

from agent.core.run_lock import holder_env
from agent.supervisor import die_with_parent

log = logging.getLogger(__name__)

RANK_MODULE = "agent.cli"


def torchrun_argv(words: list[str], nproc: int) -> list[str]:
    """The torchrun command that runs `python -m agent.cli WORDS` as `nproc` ranks on this machine."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        "-m",
        RANK_MODULE,
        *words,
    ]


def rank_pids(launcher_pid: int) -> list[int]:
    """The ranks torchrun (`launcher_pid`) started: its children running agent.cli (Linux /proc; [] elsewhere)."""
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:  # ended meanwhile
            continue
        try:
            parent = int(stat.rsplit(")", 1)[1].split()[1])
        except (ValueError, IndexError):
            continue
        if parent == launcher_pid and RANK_MODULE.encode() in cmdline:
            found.append(int(entry))
    return found


def run_ranks(words: list[str], nproc: int) -> int:
    """Run `byol-agent WORDS` as `nproc` ranks under torchrun; torchrun's exit status (see module docstring)."""
    env = {**os.environ, **holder_env()}
    proc = subprocess.Popen(torchrun_argv(words, nproc), env=env, start_new_session=True, preexec_fn=die_with_parent)

    def forward(signum: int, _frame: Optional[FrameType]) -> None:
        ranks = rank_pids(proc.pid)
        for pid in ranks or [proc.pid]:
            try:
                os.kill(pid, signal.SIGINT if ranks else signum)
            except ProcessLookupError:
                pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code
