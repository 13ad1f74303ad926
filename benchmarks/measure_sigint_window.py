"""How long after `byol-agent train` starts a Ctrl-C still ends it Python's own way.

A Ctrl-C typed in a shell reaches the new process at once; until `agent.cli.main` runs (Python's own
start-up: site, the editable install's finder, `runpy`, our module), Python handles it itself (a
KeyboardInterrupt traceback, or "Fatal Python error: init_import_site" and exit -2 / 1). After that, our
code turns it into exit 130 (or 0 once the command has its own stop handling). This sends SIGINT at
several delays after the spawn, a few times each, and counts the outcomes; it also measures the moment
our code starts directly (the child started with SIGINT blocked, as `run` starts its children: the time
until `main` unblocks it, read from /proc/PID/status).

    python benchmarks/measure_sigint_window.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DELAYS_S = (0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2)
SIGINT_BIT = 1 << (signal.SIGINT - 1)


def _argv(run_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "agent.cli",
        "train",
        "--run-dir",
        str(run_dir),
        "wire.endpoint=tcp://127.0.0.1:*",
        "model.encoder=tiny_cnn",
        "model.image_size=32",
    ]


def outcome(delay_s: float, run_dir: Path) -> str:
    """'ours' (exit 0/130, no traceback) or what Python did instead ('rc -2', 'rc 1 traceback', ...)."""
    proc = subprocess.Popen(_argv(run_dir), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(delay_s)
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # the SIGINT was swallowed somewhere in start-up: still training
        proc.kill()
        proc.communicate()
        return "still running 60 s later"
    if proc.returncode in (0, 130) and "Traceback" not in out and "Fatal Python error" not in out:
        return "ours"
    return f"rc {proc.returncode}" + (" traceback" if "Traceback" in out else "") + (" fatal" if "Fatal" in out else "")


def _block_sigint() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def time_to_our_code(run_dir: Path) -> float:
    """Seconds from spawn until agent.cli.main unblocks SIGINT (the child starts with it blocked)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        _argv(run_dir), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, preexec_fn=_block_sigint
    )
    try:
        while True:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            blocked = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigBlk:")), 16)
            if not blocked & SIGINT_BIT:
                return time.monotonic() - t0
            time.sleep(0.002)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        starts = sorted(time_to_our_code(Path(tmp) / f"s{i}") for i in range(args.repeats))
        print(
            f"spawn -> agent.cli.main: min {starts[0]:.3f} s, median {starts[len(starts) // 2]:.3f} s, "
            f"max {starts[-1]:.3f} s over {len(starts)}"
        )
        for delay in DELAYS_S:
            counts = Counter(outcome(delay, Path(tmp) / f"d{delay}-{i}") for i in range(args.repeats))
            print(f"SIGINT at {delay:.2f} s: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())), flush=True)


if __name__ == "__main__":
    main()
