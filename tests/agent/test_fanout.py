"""One sender feeding several trainer ranks, over real loopback sockets.

Each rank binds its own PULL (`FrameReceiver`); the capture's `FrameSender` connects to all of them,
spreads frames the way a ZeroMQ PUSH load-balances (a full or absent rank is skipped), and sends
each camera's end-of-stream to every rank, after that rank's frames.
"""

from __future__ import annotations

import time
from typing import Callable, Union

import numpy as np
import pytest

from agent.core.errors import EndpointError
from agent.core.wire import EndOfStream, Frame
from agent.robot.transport import FrameReceiver, FrameSender
from tests.conftest import free_tcp_endpoint

Message = Union[Frame, EndOfStream]


def _frame(seq: int, side: int = 16, camera_id: int = 0) -> Frame:
    return Frame(
        camera_id=camera_id, seq=seq, timestamp=time.time(), image=np.full((side, side, 3), seq % 256, np.uint8)
    )


def _drain(receiver: FrameReceiver, into: list[Message]) -> None:
    while (message := receiver.recv(0)) is not None:
        into.append(message)


def _until(predicate: Callable[[], bool], poll: Callable[[], None], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        poll()


def _seqs(messages: list[Message]) -> list[int]:
    return [m.seq for m in messages if isinstance(m, Frame)]


def test_lossless_fanout_delivers_every_frame_once_and_an_end_to_each_rank() -> None:
    a, b = free_tcp_endpoint(), free_tcp_endpoint()
    got: dict[str, list[Message]] = {a: [], b: []}
    with FrameReceiver(a, hwm=64) as ra, FrameReceiver(b, hwm=64) as rb:
        with FrameSender([a, b], hwm=8, lossless=True) as sender:
            assert sender.endpoints == (a, b)
            seq = 0

            def send_one() -> None:
                nonlocal seq
                assert sender.send(_frame(seq), timeout_s=5)
                seq += 1

            _until(lambda: min(sender.stats.sent_per_endpoint) > 0, send_one)  # both connections are up
            for _ in range(40):
                send_one()
            assert sender.send_end(0, seq, timeout_s=5)
            stats = sender.stats
            _until(
                lambda: all(got[e] and isinstance(got[e][-1], EndOfStream) for e in (a, b)),
                lambda: (_drain(ra, got[a]), _drain(rb, got[b]), time.sleep(0.01)),
            )
    assert stats.sent == seq and stats.dropped == 0 and sum(stats.sent_per_endpoint) == seq
    assert sorted(_seqs(got[a]) + _seqs(got[b])) == list(range(seq))  # every frame, each once
    for endpoint, sent in zip((a, b), stats.sent_per_endpoint):
        messages = got[endpoint]
        assert len(_seqs(messages)) == sent and sent >= 5  # round robin (a socket at its HWM is skipped)
        assert _seqs(messages) == sorted(_seqs(messages))  # each rank's share arrives in order ...
        assert messages[-1] == EndOfStream(camera_id=0, seq=seq, timestamp=messages[-1].timestamp)  # ... then its end
        assert sum(isinstance(m, EndOfStream) for m in messages) == 1


def test_a_rank_that_stops_reading_gets_fewer_frames_while_the_other_keeps_receiving() -> None:
    stalled, reading = free_tcp_endpoint(), free_tcp_endpoint()
    received: list[Message] = []

    def send(seq: int) -> None:  # paced like a camera (a tight loop outruns libzmq's I/O thread and drops)
        sender.send(_frame(seq, side=128))
        _drain(r_reading, received)
        time.sleep(0.0002)

    with FrameReceiver(stalled, hwm=1) as r_stalled, FrameReceiver(reading, hwm=64) as r_reading:
        with FrameSender([stalled, reading], hwm=4) as sender:  # lossy: never waits
            _until(lambda: min(sender.stats.sent_per_endpoint) > 0, lambda: send(0))
            for seq in range(600):  # 49 kB frames: the stalled rank's HWMs and socket buffers fill up
                send(seq)
            full = sender.stats
            for seq in range(200):  # then the reading rank gets (nearly) all of them
                send(seq)
            _until(
                lambda: len(received) >= sender.stats.sent_per_endpoint[1],
                lambda: (_drain(r_reading, received), time.sleep(0.01)),
            )
            stats = sender.stats
        assert r_stalled.stats.received == 0  # never read
    to_stalled, to_reading = stats.sent_per_endpoint
    assert to_reading > 3 * to_stalled, stats
    assert to_reading - full.sent_per_endpoint[1] > 150 and to_stalled - full.sent_per_endpoint[0] < 10, (full, stats)
    assert stats.sent == to_stalled + to_reading


def test_a_rank_not_up_yet_does_not_stall_the_others_and_gets_its_end_when_it_comes_up() -> None:
    up, late = free_tcp_endpoint(), free_tcp_endpoint()
    got_up: list[Message] = []
    with FrameReceiver(up, hwm=64) as r_up:
        with FrameSender([late, up], hwm=4, lossless=True) as sender:
            for seq in range(30):
                assert sender.send(_frame(seq), timeout_s=5)  # lossless, and never waits for the absent rank
            assert sender.stats.sent_per_endpoint == (0, 30)
            t0 = time.monotonic()
            assert sender.send_end(0, 30, timeout_s=0.5) is False  # the absent rank has not taken its end ...
            assert time.monotonic() - t0 < 3
            _until(lambda: len(got_up) == 31, lambda: (_drain(r_up, got_up), time.sleep(0.01)))
            assert isinstance(got_up[-1], EndOfStream)  # ... but the rank that is up got its own
            with FrameReceiver(late, hwm=64) as r_late:
                assert sender.send_end(0, 30, timeout_s=10)  # the retry delivers only what is still owed
                got_late: list[Message] = []
                _until(lambda: bool(got_late), lambda: (_drain(r_late, got_late), time.sleep(0.01)))
                time.sleep(0.2)
                _drain(r_up, got_up)
                _drain(r_late, got_late)
    assert _seqs(got_up) == list(range(30))
    assert [type(m) for m in got_late] == [EndOfStream] and got_late[0].seq == 30
    assert sum(isinstance(m, EndOfStream) for m in got_up) == 1  # not sent twice


def test_a_lossy_sender_with_an_absent_rank_delivers_to_the_one_that_is_up() -> None:
    up, absent = free_tcp_endpoint(), free_tcp_endpoint()
    got: list[Message] = []
    with FrameReceiver(up, hwm=256) as receiver, FrameSender([absent, up], hwm=16) as sender:
        _until(lambda: sender.stats.sent > 0, lambda: (sender.send(_frame(0)), time.sleep(0.01)))
        for seq in range(50):
            sender.send(_frame(seq))
            _drain(receiver, got)
            time.sleep(0.001)
        _until(lambda: len(got) >= sender.stats.sent, lambda: (_drain(receiver, got), time.sleep(0.01)))
        stats = sender.stats
    assert stats.sent_per_endpoint == (0, stats.sent) and stats.sent > 40  # the absent rank takes nothing


def test_one_endpoint_behaves_as_before() -> None:
    endpoint = free_tcp_endpoint()
    with FrameSender(endpoint, hwm=4) as sender:  # no trainer: every frame dropped and counted
        assert [sender.send(_frame(i)) for i in range(5)] == [False] * 5
        assert sender.endpoints == (endpoint,)
        assert (sender.stats.sent, sender.stats.dropped, sender.stats.sent_per_endpoint) == (0, 5, (0,))


@pytest.mark.parametrize(
    "endpoints, message",
    [
        ([], "no endpoint"),
        (["tcp://127.0.0.1:5555", "tcp://127.0.0.1:5555"], "'tcp://127.0.0.1:5555' is listed twice"),
        (["tcp://127.0.0.1:5555", "tcp://127.0.0.1:notaport"], "malformed endpoint 'tcp://127.0.0.1:notaport'"),
        (["tcp://127.0.0.1:5555", "tcp://no-such-host.invalid:5555"], "cannot resolve host"),
    ],
)
def test_bad_endpoint_lists_are_one_line_errors(endpoints: list[str], message: str) -> None:
    with pytest.raises(EndpointError, match=message) as info:
        FrameSender(endpoints, hwm=1)
    assert "\n" not in str(info.value)
