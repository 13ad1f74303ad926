"""The layers stay one-way: import-linter's contracts in pyproject.toml, function-local imports included."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_import_contracts_hold() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_a_broken_layer_is_caught() -> None:
    """The check can fail: a kernel module importing the learner breaks the layers contract."""
    probe = REPO / "agent" / "core" / "_contract_probe.py"
    probe.write_text("import trainer.byol  # deliberately upward\n")
    try:
        done = subprocess.run(
            [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        probe.unlink()
    assert done.returncode != 0 and "agent.core._contract_probe -> trainer.byol" in done.stdout, done.stdout[-3000:]
