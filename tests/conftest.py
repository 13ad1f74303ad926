"""Shared fixtures: free loopback endpoints (tests run in parallel sessions) and tiny configs."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# A model small enough that a subprocess trains a few steps in seconds on 2 CPU cores.
TINY_MODEL = [
    "model.encoder=tiny_cnn",
    "model.image_size=32",
    "model.projection_size=32",
    "model.projection_hidden_size=64",
    "train.batch_size=8",
]


def free_tcp_endpoint() -> str:
    """A loopback endpoint whose port was free a moment ago (bind-to-0 then release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def free_endpoint() -> str:
    return free_tcp_endpoint()
