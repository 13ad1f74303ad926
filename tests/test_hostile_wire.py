"""Hostile messages against real processes on loopback: a fuzz run into `byol-agent train`, and decoder
bombs into `byol-agent capture --source zmq+tcp://`. Nothing crashes, every message is counted, memory stays flat."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from agent.core.image_codecs import encode_jpeg
from agent.core.wire import HEADER_SIZE, Frame, encode_frame
from agent.robot.transport import FrameReceiver
from tests.conftest import free_tcp_endpoint
from tests.test_stream import CLI, TINY, start, status, wait_for

pytestmark = pytest.mark.slow

MAX_SIDE = 64  # the trainer's wire.max_frame_side in these tests


def _header(
    height: int,
    width: int,
    length: int,
    *,
    encoding: int = 0,
    magic: bytes = b"BYOF",
    version: int = 1,
    channels: int = 3,
    timestamp: float = 1.0,
) -> bytes:
    return struct.pack("<4sBHBQdIIB3xI", magic, version, 0, encoding, 0, timestamp, height, width, channels, length)


def _sof(jpeg: bytes, height: int, width: int) -> bytes:
    at = jpeg.index(b"\xff\xc0")
    return jpeg[: at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9 :]


def malformed_messages(rng: np.random.Generator, n: int) -> list[bytes]:
    """`n` messages, each invalid in one of many ways, all under the receiver's message-size limit."""
    good_raw = encode_frame(Frame(0, 0, 1.0, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)))
    small_jpeg = encode_jpeg(np.full((8, 8, 3), 90, np.uint8), 90)
    wide_jpeg = encode_jpeg(np.full((8, 100, 3), 90, np.uint8), 90)
    kinds = [
        lambda: rng.integers(0, 256, int(rng.integers(0, 2000)), dtype=np.uint8).tobytes(),  # random bytes
        lambda: good_raw[: int(rng.integers(0, len(good_raw)))],  # truncated
        lambda: good_raw + rng.integers(0, 256, int(rng.integers(1, 50)), dtype=np.uint8).tobytes(),  # trailing
        lambda: _header(32, 32, 3072, magic=b"EVIL") + good_raw[HEADER_SIZE:],
        lambda: _header(32, 32, 3072, version=int(rng.integers(2, 256))) + good_raw[HEADER_SIZE:],
        lambda: _header(32, 32, 3072, encoding=int(rng.integers(2, 256))) + good_raw[HEADER_SIZE:],
        lambda: _header(32, 32, 3072, channels=int(rng.integers(4, 256))) + good_raw[HEADER_SIZE:],
        lambda: _header(32, 32, 3072, timestamp=float("nan")) + good_raw[HEADER_SIZE:],
        lambda: _header(0, 32, 3072) + good_raw[HEADER_SIZE:],
        lambda: _header(100000, 100000, 3072) + good_raw[HEADER_SIZE:],  # the 100000x100000 header
        lambda: _header(31, 32, 3072) + good_raw[HEADER_SIZE:],  # raw size mismatch
        lambda: _header(8, 8, len(small_jpeg), encoding=1) + _sof(small_jpeg, 40000, 40000),  # the ~900-byte bomb
        lambda: _header(16000, 16000, len(small_jpeg), encoding=1) + _sof(small_jpeg, 16000, 16000),  # over the side
        lambda: _header(8, 100, len(wide_jpeg), encoding=1) + wide_jpeg,  # a real JPEG over the side limit
        lambda: _header(9, 8, len(small_jpeg), encoding=1) + small_jpeg,  # JPEG lies about its size
        lambda: _header(8, 8, len(small_jpeg), encoding=1) + small_jpeg[:-40],  # truncated scan data
        lambda: _header(8, 8, 300, encoding=1) + rng.integers(0, 256, 300, dtype=np.uint8).tobytes(),  # not a JPEG
    ]
    return [kinds[i % len(kinds)]() for i in range(n)]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_fuzzed_wire_never_crashes_the_trainer_and_every_message_is_counted(tmp_path: Path) -> None:
    endpoint, run = free_tcp_endpoint(), tmp_path / "run"
    trainer = start(
        [
            *CLI,
            "train",
            "--run-dir",
            str(run),
            *TINY,
            f"wire.endpoint={endpoint}",
            "wire.publish=null",
            f"wire.max_frame_side={MAX_SIDE}",
        ],
        tmp_path / "train.log",
    )
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(endpoint)
    try:
        wait_for("the trainer's status", lambda: "step" in status(run), [trainer], timeout_s=120)
        rss_before = rss_mb(trainer.pid)
        rng = np.random.default_rng(0)
        bad = malformed_messages(rng, 3000)
        good = [
            encode_frame(Frame(0, i, time.time(), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))) for i in range(40)
        ]
        started = time.monotonic()
        for i, message in enumerate(bad):
            push.send(message)
            if i % 75 == 0:
                push.send(good[i // 75])
        expected = {"frames_malformed": len(bad), "frames_in": len(good)}
        wait_for(
            f"every message counted {expected}",
            lambda: all(status(run).get(k) == v for k, v in expected.items()),
            [trainer],
            timeout_s=120,
        )
        assert time.monotonic() - started < 120
        assert trainer.poll() is None
        assert rss_mb(trainer.pid) - rss_before < 200, "the fuzz grew the trainer's memory"
    finally:
        push.close(linger=0)
        ctx.term()
        trainer.terminate()
        trainer.wait(60)
    log = (tmp_path / "train.log").read_text()
    assert "Traceback" not in log and "cv2.error" not in log, log[-2000:]
    assert "malformed message" in log  # logged, not silent


def test_decoder_bombs_on_a_subscription_do_not_kill_capture(tmp_path: Path) -> None:
    """The same ~900-byte JPEG on a PUB used to kill `capture --source zmq+tcp://...`."""
    pub_endpoint, sink = free_tcp_endpoint(), free_tcp_endpoint()
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind(pub_endpoint)
    small_jpeg = encode_jpeg(np.full((8, 8, 3), 90, np.uint8), 90)
    bombs = [
        _header(8, 8, len(small_jpeg), encoding=1) + _sof(small_jpeg, 40000, 40000),
        _header(16000, 16000, len(small_jpeg), encoding=1) + _sof(small_jpeg, 16000, 16000),
    ]
    capture = start(
        [*CLI, "capture", *TINY, f"capture.sources=[zmq+{pub_endpoint}]", f"wire.endpoint={sink}", "wire.publish=null"],
        tmp_path / "capture.log",
    )
    seq = 0

    def forwarded_after(receiver: FrameReceiver, first_seq: int) -> bool:
        """Publish good frames until capture forwards one numbered at least `first_seq`."""
        nonlocal seq
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pub.send(encode_frame(Frame(0, seq, time.time(), np.full((32, 32, 3), seq % 256, np.uint8))))
            seq += 1
            got = receiver.recv(0.1)
            while got is not None and got.seq < first_seq:
                got = receiver.recv(0)
            if got is not None:
                return True
            assert capture.poll() is None, (tmp_path / "capture.log").read_text()[-2000:]
        return False

    try:
        with FrameReceiver(sink, hwm=64) as receiver:
            assert forwarded_after(receiver, 0), "capture never forwarded a frame"
            for bomb in bombs * 3:  # one at a time: the subscriber keeps only the newest message per camera
                pub.send(bomb)
                time.sleep(0.3)
            assert forwarded_after(receiver, seq), "capture forwarded nothing after the bombs"
            assert capture.poll() is None
    finally:
        pub.close(linger=0)
        ctx.term()
        capture.terminate()
        capture.wait(30)
    log = (tmp_path / "capture.log").read_text()
    assert "Traceback" not in log and "cv2.error" not in log, log[-2000:]
