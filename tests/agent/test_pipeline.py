"""Which PULL endpoint each trainer rank binds (agent/pipeline.py `rank_endpoint`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.core.config import load_config
from agent.core.errors import ConfigError
from agent.pipeline import rank_endpoint
from tests.conftest import REPO, free_tcp_endpoint


def wire(*overrides: str):
    return load_config(None, list(overrides)).wire


@pytest.mark.parametrize(
    ("endpoint", "rank", "expected"),
    [
        ("tcp://127.0.0.1:5555", 0, "tcp://127.0.0.1:5555"),  # rank 0 binds what captures connect to
        ("tcp://127.0.0.1:5555", 3, "tcp://127.0.0.1:5558"),
        ("tcp://[::1]:6000", 1, "tcp://[::1]:6001"),
        ("tcp://127.0.0.1:*", 2, "tcp://127.0.0.1:*"),  # each rank a free port of its own
        ("ipc:///tmp/byol.sock", 0, "ipc:///tmp/byol.sock"),
        ("ipc:///tmp/byol.sock", 2, "ipc:///tmp/byol.sock-rank2"),
    ],
)
def test_without_a_list_each_rank_shifts_the_endpoint(endpoint: str, rank: int, expected: str) -> None:
    assert rank_endpoint(wire(f"wire.endpoint={endpoint}"), rank, 4) == expected


def test_a_single_process_binds_the_endpoint_as_before() -> None:
    assert rank_endpoint(wire("wire.endpoint=tcp://127.0.0.1:7000"), 0, 1) == "tcp://127.0.0.1:7000"


def test_the_list_gives_each_global_rank_its_entry() -> None:
    listed = wire("wire.endpoints=['tcp://10.0.0.1:5555', 'tcp://10.0.0.2:5555', 'tcp://10.0.0.3:5555']")
    assert [rank_endpoint(listed, r, 3) for r in range(3)] == [
        "tcp://10.0.0.1:5555",
        "tcp://10.0.0.2:5555",
        "tcp://10.0.0.3:5555",
    ]


def test_a_list_shorter_than_the_world_and_a_port_past_65535_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"wire.endpoints lists 2 endpoint\(s\) for 3 trainer ranks"):
        rank_endpoint(wire("wire.endpoints=['tcp://127.0.0.1:5555', 'tcp://127.0.0.1:5556']"), 2, 3)
    with pytest.raises(ConfigError, match="past 65535"):
        rank_endpoint(wire("wire.endpoint=tcp://127.0.0.1:65535"), 1, 2)


def _train(run_dir: Path, *words: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`byol-agent train --run-dir RUN_DIR WORDS...` as a real subprocess (stdout and stderr captured)."""
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "train", "--run-dir", str(run_dir), *words],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.mark.slow
def test_a_rank_given_too_few_endpoints_stops_with_one_line_before_training(tmp_path: Path) -> None:
    """What a torchrun rank sees: the command fails in one line, no traceback, before it joins anyone."""
    env = {
        **os.environ,
        "RANK": "2",
        "WORLD_SIZE": "3",
        "LOCAL_RANK": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "1",
    }
    done = _train(tmp_path / "run", "wire.endpoints=['tcp://127.0.0.1:5555', 'tcp://127.0.0.1:5556']", env=env)
    assert done.returncode == 2, done
    assert done.stderr.strip().splitlines() == [
        "byol-agent train: error: wire.endpoints lists 2 endpoint(s) for 3 trainer ranks; "
        "give one per rank (global rank r binds endpoints[r]) or leave it unset"
    ]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_nproc_checks_every_rank_endpoint_before_it_starts_torchrun(tmp_path: Path) -> None:
    done = _train(tmp_path / "run", "--nproc", "3", "wire.endpoint=tcp://127.0.0.1:65534")
    assert done.returncode == 2, done
    assert done.stderr.strip().splitlines() == [
        "byol-agent train: error: wire.endpoint 'tcp://127.0.0.1:65534': rank 2 would bind port 65536, past 65535; "
        "pick a lower port or list wire.endpoints"
    ]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_nproc_refuses_a_rank_port_in_use_and_a_port_listed_twice_in_one_line(tmp_path: Path) -> None:
    """Each used to start torchrun, whose ranks then failed with a ~45-line traceback."""
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        cases = {
            "in use": (
                [f"wire.endpoints=[{free_tcp_endpoint()}, tcp://127.0.0.1:{port}]"],
                f"cannot bind tcp://127.0.0.1:{port}",
            ),
            "twice": (
                [f"wire.endpoints=[{free_tcp_endpoint()}, tcp://127.0.0.1:{port}, tcp://127.0.0.1:{port}]"],
                "listed more than once",
            ),
        }
        for name, (overrides, needle) in cases.items():
            done = _train(tmp_path / name, "--nproc", "2", *overrides)
            lines = done.stderr.strip().splitlines()
            assert done.returncode == 2 and len(lines) == 1 and needle in lines[0], (name, done.stderr[-3000:])
            assert not (tmp_path / name).exists()
    finally:
        busy.close()
