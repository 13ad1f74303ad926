"""IPv6 endpoints (`tcp://[::1]:P`) on real loopback sockets: bound, connected and accepted by the CLI.

Before pyzmq's IPV6 option was set, binding `tcp://[::1]:P` failed ("cannot bind ... Invalid argument") and a
capture aimed at an IPv6 trainer dropped every frame without an error (libzmq never connected it).
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from agent.core.config import load_config
from agent.core.wire import Frame
from agent.robot.subscriber import LatestFrameSubscriber
from agent.robot.transport import FrameReceiver, FrameSender
from tests.conftest import REPO, TINY_MODEL


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")


def free_ipv6_endpoint() -> str:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.bind(("::1", 0))
        return f"tcp://[::1]:{sock.getsockname()[1]}"


def _frame(seq: int, camera_id: int = 0) -> Frame:
    return Frame(camera_id=camera_id, seq=seq, timestamp=time.time(), image=np.full((16, 16, 3), seq % 256, np.uint8))


def test_a_receiver_binds_ipv6_loopback_and_a_sender_delivers_to_it() -> None:
    endpoint = free_ipv6_endpoint()
    with FrameReceiver(endpoint, hwm=64) as receiver, FrameSender(endpoint, hwm=64, lossless=True) as sender:
        assert receiver.endpoint == endpoint
        for seq in range(5):
            assert sender.send(_frame(seq), timeout_s=10.0)
        got = [receiver.recv(10.0) for _ in range(5)]
    assert [f.seq for f in got] == list(range(5))


def test_a_subscriber_reads_an_ipv6_publisher() -> None:
    publish = free_ipv6_endpoint()
    with FrameSender(free_ipv6_endpoint(), hwm=4, publish=publish) as sender, LatestFrameSubscriber(publish) as sub:
        deadline, frame = time.monotonic() + 10.0, None
        while frame is None and time.monotonic() < deadline:
            sender.send(_frame(7))
            frame = sub.latest(0.1)
    assert frame is not None and frame.seq == 7


def test_config_accepts_ipv6_endpoints() -> None:
    wire = load_config(
        None,
        [
            "wire.endpoint=tcp://[::1]:5555",
            "wire.publish=tcp://[::1]:5556",
            "wire.endpoints=['tcp://[::1]:5555', 'tcp://[::1]:5557']",
        ],
    ).wire
    assert (wire.endpoint, wire.publish, wire.endpoints) == (
        "tcp://[::1]:5555",
        "tcp://[::1]:5556",
        ["tcp://[::1]:5555", "tcp://[::1]:5557"],
    )


@pytest.mark.slow
def test_train_binds_an_ipv6_endpoint_and_a_capture_cli_feeds_it(tmp_path: Path) -> None:
    """`byol-agent train --endpoint tcp://[::1]:P` trains on frames from `byol-agent capture --endpoint tcp://[::1]:P`."""
    endpoint = free_ipv6_endpoint()
    train = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "train",
            "--run-dir",
            str(tmp_path / "run"),
            "--endpoint",
            endpoint,
            "--max-steps",
            "2",
            *TINY_MODEL,
            "buffer.min_fill=8",
            "train.checkpoint_every=1000",
            "export.every_steps=1000",
            "capture.height=32",
            "capture.width=32",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    capture = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "capture",
            "--source",
            "demo",
            "--endpoint",
            endpoint,
            "--publish",
            "none",
            "--fps",
            "30",
            "capture.height=32",
            "capture.width=32",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        train_out, _ = train.communicate(timeout=150)
    finally:
        capture.terminate()
        capture_out, _ = capture.communicate(timeout=30)
        train.kill()
    assert train.returncode == 0, train_out[-2000:]
    final = [line for line in train_out.splitlines() if line.startswith("step 2 |")]
    assert final and int(re.search(r"frames (\d+) in", final[-1])[1]) >= 8, train_out[-2000:]
    assert "Traceback" not in capture_out, capture_out[-2000:]
