"""Start-up of `byol-agent` subcommands: light imports, and a Ctrl-C at any moment is clean.

Every subcommand used to import matplotlib at start (through the eval command and the report
module), and a Ctrl-C during those first seconds left a KeyboardInterrupt traceback in the child's
log (`run` children: capture.log, trainer.log) with exit code -2.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import REPO, TINY_MODEL, free_tcp_endpoint

HEAVY = ("torch", "torchvision", "matplotlib", "sklearn", "onnx", "onnxruntime")
_PROBE = (
    "import sys, agent.cli\n"
    "try:\n    code = agent.cli.main(sys.argv[1:])\nexcept SystemExit as exc:\n    code = exc.code\n"
    f"print('RC', code)\nprint('HEAVY', *sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
)


def _heavy_modules(*argv: str) -> tuple[list[str], str]:
    proc = subprocess.run([sys.executable, "-c", _PROBE, *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("HEAVY")]
    assert lines, (proc.stdout, proc.stderr)
    return lines[-1].split()[1:], proc.stdout + proc.stderr


@pytest.mark.parametrize("command", ["capture", "train", "runtime", "export", "report"])
def test_parsing_a_subcommand_imports_no_heavy_library(command: str) -> None:
    heavy, output = _heavy_modules(command, "--help")
    assert heavy == [], output


def test_capture_streams_without_torch_or_matplotlib(tmp_path: Path) -> None:
    """The real capture path end to end (a folder, lossy, nobody listening): camera-side imports only."""
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((16, 16, 3), 40 * i, np.uint8))
    heavy, output = _heavy_modules(
        "capture", "--source", str(tmp_path), "--publish", "none", "--pace", "asap", "capture.lossless=false",
        f"wire.endpoint={free_tcp_endpoint()}",
    )
    assert "RC 0" in output and heavy == [], output


def _interrupted(argv: list[str], delay_s: float) -> tuple[int, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", *argv], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        time.sleep(delay_s)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out


@pytest.mark.parametrize("delay_s", [0.5, 2.5])
def test_ctrl_c_early_in_capture_is_clean(delay_s: float) -> None:
    argv = ["capture", "--source", "demo", "--publish", "none", f"wire.endpoint={free_tcp_endpoint()}"]
    code, out = _interrupted(argv, delay_s)
    assert code in (0, 130) and "Traceback" not in out, (code, out)


@pytest.mark.parametrize("delay_s", [0.5, 2.5])
def test_ctrl_c_early_in_train_is_clean(tmp_path: Path, delay_s: float) -> None:
    argv = ["train", "--run-dir", str(tmp_path / "run"), f"wire.endpoint={free_tcp_endpoint()}", *TINY_MODEL]
    code, out = _interrupted(argv, delay_s)
    assert code in (0, 130) and "Traceback" not in out, (code, out)


def test_a_child_stopped_while_its_interpreter_starts_exits_130_without_traceback(tmp_path: Path) -> None:
    """`run`/`replay` stopping a child they have just (re)started: the SIGINT lands in Python's own
    start-up (before any of our code), which used to print "Fatal Python error: init_import_site" and a
    KeyboardInterrupt traceback, or end with -2."""
    from agent.supervisor import ChildSpec, Supervisor

    argv = [sys.executable, "-m", "agent.cli", "capture", "--source", "demo", "--publish", "none",
            f"wire.endpoint={free_tcp_endpoint()}"]
    sup = Supervisor([ChildSpec(f"c{i}", argv, 60.0) for i in range(3)], tmp_path, max_restarts=0)
    sup.start()
    codes = sup.stop()  # SIGINT within milliseconds of each spawn
    logs = "".join(path.read_text() for path in tmp_path.glob("*.log"))
    assert set(codes.values()) <= {0, 130} and "Traceback" not in logs, (codes, logs)


def test_an_unknown_flag_is_reported_against_its_subcommand() -> None:
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "run", "--duraton", "5"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "byol-agent run: error: unrecognized arguments: --duraton"
    assert "usage: byol-agent run" in proc.stderr
