"""ZeroMQ transport over real loopback sockets: delivery, drops, garbage, latest-frame, bad endpoints."""

from __future__ import annotations

import os
import socket
import time

import numpy as np
import pytest
import zmq

from agent.core.errors import EndpointError
from agent.core.wire import MAGIC, Frame, encode_frame
from agent.robot.curve import WireSecurity
from agent.robot.endpoints import validate_endpoint
from agent.robot.subscriber import LatestFrameSubscriber
from agent.robot.transport import FrameReceiver, FrameSender
from tests.conftest import free_tcp_endpoint


def _frame(camera_id: int, seq: int, h: int = 16, w: int = 16) -> Frame:
    image = np.full((h, w, 3), seq % 256, np.uint8)
    return Frame(camera_id=camera_id, seq=seq, timestamp=time.time(), image=image)


class _PlainPub:
    """A default-settings PUB (HWM 1000, no conflation): whatever reaches the subscriber is all queued."""

    def __init__(self, endpoint: str) -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.bind(endpoint)

    def send(self, frame: Frame) -> None:
        self._sock.send(encode_frame(frame))

    def close(self) -> None:
        self._sock.close(linger=0)
        self._ctx.term()


def _publish_until_seen(pub, sub: LatestFrameSubscriber, camera_id: int = 0) -> int:
    """PUB/SUB joins asynchronously: publish until the subscriber has one frame; return the next seq."""
    deadline = time.monotonic() + 10
    seq = 0
    while time.monotonic() < deadline:
        pub.send(_frame(camera_id, seq))
        seq += 1
        if sub.latest(0.05) is not None:
            return seq
    raise AssertionError("subscriber never received a frame")


def test_many_senders_feed_one_receiver(free_endpoint: str) -> None:
    with FrameReceiver(free_endpoint, hwm=64) as receiver:
        senders = [FrameSender(free_endpoint, hwm=8, lossless=True) for _ in range(2)]
        try:
            for cam, sender in enumerate(senders):
                for seq in range(5):
                    assert sender.send(_frame(cam, seq), timeout_s=10)
            got = [receiver.recv(5) for _ in range(10)]
        finally:
            for sender in senders:
                sender.close()
        assert all(f is not None for f in got)
        by_camera = {cam: [f.seq for f in got if f.camera_id == cam] for cam in (0, 1)}
        assert by_camera == {0: [0, 1, 2, 3, 4], 1: [0, 1, 2, 3, 4]}
        assert int(got[0].image[0, 0, 0]) == got[0].seq
        assert receiver.stats.received == 10 and receiver.stats.malformed == 0
        assert receiver.recv(0) is None


def test_garbage_is_counted_and_ingestion_continues(free_endpoint: str) -> None:
    with FrameReceiver(free_endpoint, hwm=64) as receiver:
        ctx = zmq.Context()
        rogue = ctx.socket(zmq.PUSH)
        rogue.connect(free_endpoint)
        good = encode_frame(_frame(9, 1))
        for junk in (b"", b"garbage", MAGIC + bytes(60), good[:-5], b"\x80\x04pickle?"):
            rogue.send(junk)
        rogue.send(good)  # same connection: arrives after the junk
        frame = receiver.recv(5)
        rogue.close(linger=0)
        ctx.term()
        assert frame is not None and (frame.camera_id, frame.seq) == (9, 1)
        assert receiver.stats.malformed == 5
        assert "shorter than the 40-byte header" in receiver.stats.last_error
        raw_tcp = socket.create_connection(("127.0.0.1", int(free_endpoint.rsplit(":", 1)[1])))
        raw_tcp.sendall(os.urandom(4096))  # not ZMTP: libzmq reads it as ZMTP 1.0 junk or drops the peer
        raw_tcp.close()
        with FrameSender(free_endpoint, hwm=8, lossless=True) as sender:
            assert sender.send(_frame(2, 7), timeout_s=10)
            frame = receiver.recv(5)
        assert frame is not None and frame.seq == 7
        assert receiver.stats.received == 2


def test_sender_with_no_trainer_drops_and_counts(free_endpoint: str) -> None:
    with FrameSender(free_endpoint, hwm=4) as sender:
        results = [sender.send(_frame(0, i)) for i in range(50)]
        assert results == [False] * 50
        assert sender.stats.dropped == 50 and sender.stats.sent == 0


def test_sender_to_a_stalled_trainer_drops_instead_of_blocking(free_endpoint: str) -> None:
    with FrameReceiver(free_endpoint, hwm=1) as receiver, FrameSender(free_endpoint, hwm=1) as sender:
        big = _frame(0, 0, 480, 640)
        deadline = time.monotonic() + 10
        while not sender.send(big) and time.monotonic() < deadline:
            receiver.recv(0.01)  # wait for the connection to be up
        for _ in range(300):  # never read: kernel buffers and both HWMs fill up
            sender.send(big)
        stats = sender.stats
        assert stats.dropped > 0 and stats.sent >= 1
        assert stats.sent + stats.dropped >= 301


def test_lossless_send_times_out_without_counting_a_drop(free_endpoint: str) -> None:
    with FrameSender(free_endpoint, hwm=1, lossless=True) as sender:
        assert sender.send(_frame(0, 0), timeout_s=0.05) is False
        assert sender.stats.dropped == 0 and sender.stats.sent == 0
        sender.close(linger_s=0)  # nothing to flush to: don't wait the default lossless linger


@pytest.mark.parametrize("publisher", ["frame_sender", "plain_pub"])
def test_latest_subscriber_returns_the_newest_frame(free_endpoint: str, publisher: str) -> None:
    if publisher == "frame_sender":
        pub = FrameSender(free_tcp_endpoint(), hwm=4, publish=free_endpoint)
    else:
        pub = _PlainPub(free_endpoint)
    try:
        with LatestFrameSubscriber(free_endpoint) as sub:
            seq = _publish_until_seen(pub, sub)
            last = seq + 199
            for s in range(seq, last):
                pub.send(_frame(0, s))
            time.sleep(0.1)  # a PUB drops what exceeds its HWM in a burst (the newest): the last one goes alone
            pub.send(_frame(0, last))
            seen = []
            deadline = time.monotonic() + 10
            while (not seen or seen[-1] != last) and time.monotonic() < deadline:
                frame = sub.latest(0.5)
                if frame is not None:
                    seen.append(frame.seq)
            assert seen and seen[-1] == last
            assert len(seen) < 20, f"conflation should skip stale frames, saw {len(seen)} of 200"
            assert seen == sorted(seen)
            assert sub.latest(0.05) is None  # nothing newer than what was returned
    finally:
        pub.close()


def test_latest_subscriber_filters_by_camera(free_endpoint: str) -> None:
    with FrameSender(free_tcp_endpoint(), hwm=4, publish=free_endpoint) as sender:
        with LatestFrameSubscriber(free_endpoint, camera_id=5) as sub:
            _publish_until_seen(sender, sub, camera_id=5)
            for i in range(20):
                sender.send(_frame(4, i))
            sender.send(_frame(5, 1000))
            frame = sub.latest(5)
            assert frame is not None and (frame.camera_id, frame.seq) == (5, 1000)


def test_latest_subscriber_to_all_cameras_keeps_the_newest_frame_of_each(free_endpoint: str) -> None:
    """A capture sends its cameras back to back each tick; a slow reader must still see every camera, newest first."""
    cameras = (0, 1, 2)
    with FrameSender(free_tcp_endpoint(), hwm=4, publish=free_endpoint) as sender:
        with LatestFrameSubscriber(free_endpoint) as sub:
            seq = _publish_until_seen(sender, sub, camera_id=7)  # camera 7 only while joining; sent once more below
            seen = []
            for tick in range(seq, seq + 12):
                for cam in cameras:
                    sender.send(_frame(cam, tick))
                time.sleep(1 / 30)
                if tick % 3 == 0:  # a reader at a third of the rate
                    frame = sub.latest(0.5)
                    seen.append(None if frame is None else frame.camera_id)
            last = seq + 12
            for cam in cameras:
                sender.send(_frame(cam, last))
            time.sleep(0.2)
            newest = [sub.latest(0.5) for _ in range(len(cameras))]
            assert sub.latest(0.05) is None  # nothing newer than what was returned
        assert set(seen) >= {0, 1, 2}, seen
        assert sorted((f.camera_id, f.seq) for f in newest if f is not None) == [(cam, last) for cam in cameras]
        assert sub.stats.malformed == 0


@pytest.mark.parametrize(
    "endpoint, message",
    [
        ("localhost:5555", "malformed endpoint"),
        ("tcp://127.0.0.1", "malformed endpoint"),
        ("tcp://127.0.0.1:notaport", "malformed endpoint"),
        ("tcp://127.0.0.1:70000", "out of range"),
        ("tcp://no-such-host.invalid:5555", "cannot resolve host"),
        ("tcp://127.0.0.1:*", "needs a port number"),
    ],
)
def test_bad_connect_endpoints_are_one_line_errors(endpoint: str, message: str) -> None:
    with pytest.raises(EndpointError, match=message) as info:
        FrameSender(endpoint, hwm=1)
    assert "\n" not in str(info.value) and endpoint in str(info.value)
    with pytest.raises(EndpointError, match=message):
        LatestFrameSubscriber(endpoint)


def test_bind_errors_name_the_endpoint(free_endpoint: str) -> None:
    with FrameReceiver(free_endpoint, hwm=4):
        with pytest.raises(EndpointError, match="cannot bind .*in use"):
            FrameReceiver(free_endpoint, hwm=4)
        with pytest.raises(EndpointError, match="cannot bind"):
            FrameSender(free_tcp_endpoint(), hwm=1, publish=free_endpoint)
    with pytest.raises(EndpointError, match="cannot bind tcp://192.0.2.1"):  # not ours: insecure lets the bind be tried
        FrameReceiver("tcp://192.0.2.1:5555", hwm=4, security=WireSecurity(insecure=True))
    validate_endpoint("ipc:///tmp/x.sock", bind=True)
    with pytest.raises(EndpointError, match="empty path"):
        validate_endpoint("ipc://", bind=True)
