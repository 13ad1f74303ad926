"""One writer per run directory: real processes contend for a real `fcntl.flock`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.commands._common import lock_export_dir
from agent.core.run_lock import HOLDERS_ENV, holder_env, lock_directory
from tests.conftest import REPO, TINY_MODEL, free_tcp_endpoint

LOCK_TIMEOUT_S = 90.0  # a loaded 2-core machine takes a few seconds to start Python and parse the config


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "agent.cli", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _train(run_dir: Path) -> subprocess.Popen:
    # Its own port each, as the operator did: without the lock both trainers would run.
    return _cli("train", "--run-dir", str(run_dir), f"wire.endpoint={free_tcp_endpoint()}", *TINY_MODEL)


def _holder_pid(run_dir: Path) -> object:
    try:
        return json.loads((run_dir / "run.lock").read_text()).get("pid")
    except (OSError, ValueError):
        return None


def _wait_holder(run_dir: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    while _holder_pid(run_dir) != proc.pid:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the trainer never took the run-dir lock"
        time.sleep(0.1)


def _refused(proc: subprocess.Popen, holder_pid: int) -> None:
    out, err = proc.communicate(timeout=LOCK_TIMEOUT_S)
    assert proc.returncode == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and f"pid {holder_pid}" in lines[0] and "in use" in lines[0], err
    assert "Traceback" not in out + err


@pytest.mark.slow
def test_second_writer_is_refused_and_a_killed_holders_lock_is_taken_over(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = _train(run_dir)
    procs = [first]
    try:
        _wait_holder(run_dir, first)
        procs += [_train(run_dir), _cli("run", "--run-dir", str(run_dir), "--duration", "5")]
        _refused(procs[-2], first.pid)
        _refused(procs[-1], first.pid)
        assert not (run_dir / "logs").exists(), "the refused run started its pipeline"

        first.send_signal(signal.SIGKILL)  # no clean-up of any kind: the kernel drops the flock
        first.wait(timeout=30)
        third = _train(run_dir)
        procs.append(third)
        _wait_holder(run_dir, third)
        third.send_signal(signal.SIGINT)
        out, err = third.communicate(timeout=120)
        assert third.returncode in (0, 130), err
        assert f"took over {run_dir / 'run.lock'}" in err and f"pid {first.pid}" in err, err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_the_lock_is_handed_to_children_and_refuses_everyone_else(tmp_path: Path) -> None:
    """What `run` does for its trainer: the child holds the parent's lock; an outsider is refused."""
    probe = (
        "import sys; from agent.core.errors import ByolAgentError; from agent.core.run_lock import lock_directory\n"
        "try:\n    lock = lock_directory(sys.argv[1], 'train')\nexcept ByolAgentError as exc:\n"
        "    print(exc); sys.exit(2)\nprint('inherited' if lock.inherited else 'taken')\n"
    )
    with lock_directory(tmp_path, "run") as lock:
        pass_fds, env = lock.inheritance()
        child = subprocess.run(
            [sys.executable, "-c", probe, str(tmp_path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            pass_fds=pass_fds,
            env={**os.environ, **env},
        )
        assert (child.returncode, child.stdout.strip()) == (0, "inherited"), child
        outsider = subprocess.run(
            [sys.executable, "-c", probe, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert outsider.returncode == 2 and "in use by byol-agent run (pid" in outsider.stdout, outsider
    free = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert (free.returncode, free.stdout.strip()) == (0, "taken"), free


def test_export_refuses_an_export_dir_another_publisher_holds(tmp_path: Path) -> None:
    out_dir = tmp_path / "exports"
    with lock_export_dir(out_dir, "export"):
        proc = _cli("export", "--run-dir", str(tmp_path), "--out", str(out_dir))
        try:
            out, err = proc.communicate(timeout=LOCK_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 2 and f"export directory {out_dir} is in use" in err and f"pid {os.getpid()}" in err, err
    assert len(err.strip().splitlines()) == 1


def test_a_launcher_holds_the_lock_for_descendants_that_cannot_inherit_it(tmp_path: Path) -> None:
    """`train --nproc`: torchrun closes inherited descriptors, so the ranks hold the lock through their
    launcher, named in their environment; naming a holder that is not an ancestor gets nothing."""
    probe = (
        "import sys; from agent.core.errors import ByolAgentError; from agent.core.run_lock import lock_directory\n"
        "try:\n    lock = lock_directory(sys.argv[1], 'train')\nexcept ByolAgentError as exc:\n"
        "    print(exc); sys.exit(2)\nprint('inherited' if lock.inherited else 'taken')\n"
    )
    # like torchrun: a middle process that starts the rank with every inherited descriptor closed
    middle = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:], close_fds=True).returncode)"
    with lock_directory(tmp_path, "train") as lock:
        assert lock.inheritance()[0]  # a descriptor to hand down, which the middle process will close
        grandchild = subprocess.run(
            [sys.executable, "-c", middle, sys.executable, "-c", probe, str(tmp_path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **holder_env()},
        )
        assert (grandchild.returncode, grandchild.stdout.strip()) == (0, "inherited"), grandchild
        unnamed = subprocess.run(
            [sys.executable, "-c", middle, sys.executable, "-c", probe, str(tmp_path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert unnamed.returncode == 2 and f"in use by byol-agent train (pid {os.getpid()}" in unnamed.stdout, unnamed

    # A lock held by a process that is not our ancestor is refused even when the environment names it.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from agent.core.run_lock import lock_directory\n"
            "lock = lock_directory(sys.argv[1], 'train'); print('locked', flush=True); time.sleep(120)",
            str(tmp_path),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        named = subprocess.run(
            [sys.executable, "-c", probe, str(tmp_path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, HOLDERS_ENV: str(holder.pid)},
        )
        assert named.returncode == 2 and f"(pid {holder.pid}" in named.stdout, named
    finally:
        holder.kill()
        holder.wait()
