"""CURVE on real loopback sockets: authorised peers deliver, anyone else delivers nothing and is counted."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from agent.cli import main as cli_main
from agent.core.config import WireConfig, load_config
from agent.core.errors import ConfigError, EndpointError
from agent.core.wire import Frame, encode_frame, max_message_bytes
from agent.robot.curve import WireSecurity, create_keys, is_loopback
from agent.robot.subscriber import LatestFrameSubscriber
from agent.robot.transport import FrameReceiver, FrameSender


def _frame(seq: int, side: int = 16) -> Frame:
    return Frame(camera_id=0, seq=seq, timestamp=time.time(), image=np.full((side, side, 3), seq % 256, np.uint8))


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """trainer, robot7 (authorised) and intruder key pairs; authorized/ holds robot7's public key only."""
    out = {}
    for name in ("trainer", "robot7", "intruder"):
        public, secret = create_keys(tmp_path / "keys", name)
        out[name], out[name + "_public"] = secret, public
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    shutil.copy(out["robot7_public"], authorized)
    out["authorized"] = authorized
    return out


def _security(**fields: object) -> WireSecurity:
    return WireSecurity.from_config(WireConfig(**{k: str(v) if isinstance(v, Path) else v for k, v in fields.items()}))


def test_only_authorised_keys_deliver_and_the_rest_are_counted(keys: dict[str, Path], free_endpoint: str) -> None:
    server = _security(secret_key=keys["trainer"], authorized_keys=keys["authorized"])
    good = _security(secret_key=keys["robot7"], trainer_key=keys["trainer_public"])
    intruder = _security(secret_key=keys["intruder"], trainer_key=keys["trainer_public"])
    with FrameReceiver(free_endpoint, hwm=64, security=server) as receiver:
        bad_senders = [FrameSender(free_endpoint, hwm=8, security=intruder)]
        plain = zmq.Context()  # a sender with no keys at all
        no_key = plain.socket(zmq.PUSH)
        no_key.connect(free_endpoint)
        try:
            with FrameSender(free_endpoint, hwm=8, lossless=True, security=good) as sender:
                for seq in range(30):
                    for bad in bad_senders:
                        bad.send(_frame(1000 + seq))
                    try:
                        no_key.send(encode_frame(_frame(2000 + seq)), zmq.NOBLOCK)
                    except zmq.Again:  # never connected: its handshake was refused
                        pass
                    assert sender.send(_frame(seq), timeout_s=10)
                got = [receiver.recv(5) for _ in range(30)]
                assert [f.seq for f in got if f is not None] == list(
                    range(30)
                )  # the authorised feed, whole and in order
                assert receiver.recv(0.5) is None  # nothing from the others
                deadline = time.monotonic() + 10
                while receiver.stats.refused < 2 and time.monotonic() < deadline:
                    receiver.recv(0.1)
                assert receiver.stats.refused >= 2  # the unknown key and the key-less sender
                assert receiver.stats.received == 30
        finally:
            for bad in bad_senders:
                bad.close()
            no_key.close(linger=0)
            plain.term()


def test_subscriber_reaches_a_curve_publisher_only_with_its_key(keys: dict[str, Path], free_endpoint: str) -> None:
    publisher = _security(secret_key=keys["trainer"], authorized_keys=keys["authorized"])  # a capture's PUB
    reader = _security(secret_key=keys["robot7"], publisher_key=keys["trainer_public"])
    outsider = _security(secret_key=keys["intruder"], publisher_key=keys["trainer_public"])
    from tests.conftest import free_tcp_endpoint

    with FrameSender(free_tcp_endpoint(), hwm=4, publish=free_endpoint, security=publisher) as sender:
        with (
            LatestFrameSubscriber(free_endpoint, security=reader) as sub,
            LatestFrameSubscriber(free_endpoint, security=outsider) as other,
        ):
            deadline, seen, seq = time.monotonic() + 10, None, 0
            while seen is None and time.monotonic() < deadline:
                sender.send(_frame(seq))
                seq += 1
                seen = sub.latest(0.05)
            assert seen is not None
            for _ in range(20):
                sender.send(_frame(seq))
                seq += 1
            assert other.latest(0.5) is None


def test_non_loopback_without_keys_is_refused_unless_insecure(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(EndpointError, match="refusing to bind tcp://\\*:5555 without CURVE keys.*byol-agent keys"):
        FrameReceiver("tcp://*:5555", hwm=4)
    with pytest.raises(EndpointError, match="refusing to connect to tcp://192.0.2.1:5555 without CURVE keys"):
        FrameSender("tcp://192.0.2.1:5555", hwm=4)
    with caplog.at_level(logging.WARNING, logger="agent.robot.curve"):
        with FrameReceiver("tcp://0.0.0.0:*", hwm=4, security=WireSecurity(insecure=True)) as receiver:
            assert receiver.endpoint.startswith("tcp://0.0.0.0:")
    assert "unauthenticated and unencrypted" in caplog.text


@pytest.mark.parametrize(
    "endpoint, local",
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.3.4.5:5555", True),
        ("tcp://[::1]:5555", True),
        ("tcp://localhost:5555", True),
        ("ipc:///tmp/x.sock", True),
        ("tcp://*:5555", False),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://192.168.1.7:5555", False),
    ],
)
def test_is_loopback(endpoint: str, local: bool) -> None:
    assert is_loopback(endpoint) is local


def test_key_files_are_checked_at_start_with_one_line_errors(keys: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="wire.secret_key .* is not a file"):
        _security(secret_key=tmp_path / "missing.key_secret")
    with pytest.raises(ConfigError, match="holds no secret key"):
        _security(secret_key=keys["robot7_public"])
    garbage = tmp_path / "garbage.key"
    garbage.write_bytes(b"\xff\xfe not a key \x00")
    with pytest.raises(ConfigError, match="wire.trainer_key"):
        _security(trainer_key=garbage)
    with pytest.raises(ConfigError, match="not a directory"):
        _security(secret_key=keys["trainer"], authorized_keys=tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="holds no public key files"):
        FrameReceiver("tcp://127.0.0.1:*", hwm=4, security=_security(secret_key=keys["trainer"], authorized_keys=empty))


def test_keys_command_writes_a_pair_and_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["keys", "--out", str(tmp_path / "k"), "--name", "robot9"]) == 0
    assert (tmp_path / "k" / "robot9.key").is_file()
    assert (tmp_path / "k" / "robot9.key_secret").stat().st_mode & 0o077 == 0
    assert cli_main(["keys", "--out", str(tmp_path / "k"), "--name", "robot9"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    cfg = load_config(None, [f"wire.secret_key={tmp_path / 'k' / 'robot9.key_secret'}"])
    assert WireSecurity.from_config(cfg.wire).pair is not None


def test_oversize_message_is_dropped_by_libzmq_and_the_receiver_carries_on(free_endpoint: str) -> None:
    """ZMQ_MAXMSGSIZE: a 4 MiB message to a receiver limited to 16 px frames is never allocated or delivered."""
    with FrameReceiver(free_endpoint, hwm=4, max_side=16) as receiver:
        ctx = zmq.Context()
        rogue = ctx.socket(zmq.PUSH)
        rogue.connect(free_endpoint)
        rogue.send(b"BYOF" + bytes(4 << 20))
        assert receiver.recv(1.0) is None
        rogue.close(linger=0)
        ctx.term()
        assert max_message_bytes(16) < 1000
        with FrameSender(free_endpoint, hwm=4, lossless=True) as sender:
            assert sender.send(_frame(7), timeout_s=5)
            frame = receiver.recv(5)
        assert frame is not None and frame.seq == 7
        with FrameSender(free_endpoint, hwm=4, lossless=True) as sender:  # a small JPEG over the side limit: counted
            assert sender.send(_frame(8, side=17), jpeg_quality=90, timeout_s=5)
            assert receiver.recv(1.0) is None
        assert receiver.stats.malformed == 1 and "exceeds the 16 px" in receiver.stats.last_error


def test_frames_at_exactly_the_side_limit_arrive_under_curve(keys: dict[str, Path], free_endpoint: str) -> None:
    """Review find: MAXMSGSIZE was the plaintext maximum, so CURVE's overhead made max-size frames vanish."""
    server = _security(secret_key=keys["trainer"], authorized_keys=keys["authorized"])
    client = _security(secret_key=keys["robot7"], trainer_key=keys["trainer_public"])
    with FrameReceiver(free_endpoint, hwm=8, max_side=32, security=server) as receiver:
        with FrameSender(free_endpoint, hwm=8, lossless=True, security=client) as sender:
            for seq in range(3):
                assert sender.send(_frame(seq, side=32), timeout_s=10)
            got = [receiver.recv(5) for _ in range(3)]
    assert [f.seq for f in got if f is not None] == [0, 1, 2]


def test_damaged_key_files_are_one_line_errors_and_never_kill_the_zap_handler(
    keys: dict[str, Path], free_endpoint: str, tmp_path: Path
) -> None:
    """Review find: a half-copied .key raised IndexError, killing the ZAP thread (every handshake hung)."""
    half = tmp_path / "half.key"
    half.write_text("metadata\ncurve\n    public-key\n")  # the '=' and the key never made it
    not_z85 = tmp_path / "notz85.key"
    not_z85.write_text('curve\n    public-key = "' + "~" * 40 + '"\n')
    for bad in (half, not_z85):
        with pytest.raises(ConfigError, match="is not a CURVE key file"):
            _security(trainer_key=bad)
    server = _security(secret_key=keys["trainer"], authorized_keys=keys["authorized"])
    client = _security(secret_key=keys["robot7"], trainer_key=keys["trainer_public"])
    with FrameReceiver(free_endpoint, hwm=8, security=server) as receiver:
        shutil.copy(half, keys["authorized"] / "half.key")  # appears while the trainer runs
        with FrameSender(free_endpoint, hwm=8, lossless=True, security=client) as sender:
            assert sender.send(_frame(1), timeout_s=10)
            frame = receiver.recv(10)
        assert frame is not None and frame.seq == 1
    # leaving the with-block returned: closing did not hang on a dead authenticator


@pytest.mark.parametrize("endpoint", ["tcp://myhost.local:5555", "tcp://localhost.evil.com:5555"])
def test_host_names_other_than_localhost_need_keys(endpoint: str) -> None:
    """A name that resolves to loopback now may resolve elsewhere at libzmq's next reconnect."""
    assert not is_loopback(endpoint)


def test_a_capture_feeding_two_ranks_authenticates_to_each(keys: dict[str, Path]) -> None:
    """Every rank binds its own PULL with the trainer's key pair; the capture's one socket per
    endpoint authenticates with wire.trainer_key to each, and an unauthorised sender reaches neither."""
    from agent.core.wire import EndOfStream
    from tests.conftest import free_tcp_endpoint

    server = _security(secret_key=keys["trainer"], authorized_keys=keys["authorized"])  # shared by both ranks
    good = _security(secret_key=keys["robot7"], trainer_key=keys["trainer_public"])
    intruder = _security(secret_key=keys["intruder"], trainer_key=keys["trainer_public"])
    a, b = free_tcp_endpoint(), free_tcp_endpoint()
    got: dict[str, list] = {a: [], b: []}
    with FrameReceiver(a, hwm=64, security=server) as ra, FrameReceiver(b, hwm=64, security=server) as rb:
        receivers = {a: ra, b: rb}

        def drain() -> None:
            for endpoint, receiver in receivers.items():
                while (message := receiver.recv(0.01)) is not None:
                    got[endpoint].append(message)

        with FrameSender([a, b], hwm=8, security=intruder) as bad:
            for seq in range(10):
                bad.send(_frame(1000 + seq))
        with FrameSender([a, b], hwm=8, lossless=True, security=good) as sender:
            seq, deadline = 0, time.monotonic() + 10
            while min(sender.stats.sent_per_endpoint) == 0:  # until both handshakes are done
                assert time.monotonic() < deadline, sender.stats
                assert sender.send(_frame(seq), timeout_s=5)
                seq += 1
            for _ in range(10):
                assert sender.send(_frame(seq), timeout_s=5)
                seq += 1
            assert sender.send_end(0, seq, timeout_s=5)
            deadline = time.monotonic() + 10
            while not all(got[e] and isinstance(got[e][-1], EndOfStream) for e in (a, b)):
                assert time.monotonic() < deadline, got
                drain()
        while min(ra.stats.refused, rb.stats.refused) < 1 and time.monotonic() < deadline + 10:
            drain()
    frames = [m.seq for e in (a, b) for m in got[e] if not isinstance(m, EndOfStream)]
    assert sorted(frames) == list(range(seq))  # only the authorised feed, every frame once
    assert ra.stats.refused >= 1 and rb.stats.refused >= 1  # the intruder's key was refused by each rank


def test_keys_are_required_per_endpoint(keys: dict[str, Path]) -> None:
    """A loopback first endpoint does not excuse a second one that leaves the machine."""
    from tests.conftest import free_tcp_endpoint

    with pytest.raises(EndpointError, match="refusing to connect to tcp://192.0.2.1:5555 without CURVE keys"):
        FrameSender([free_tcp_endpoint(), "tcp://192.0.2.1:5555"], hwm=4)
    with pytest.raises(EndpointError, match="refusing to connect to tcp://192.0.2.1:5555 without CURVE keys"):
        FrameSender(
            [free_tcp_endpoint(), "tcp://192.0.2.1:5555"], hwm=4, security=_security(secret_key=keys["robot7"])
        )  # no trainer key: no CURVE
    with FrameSender(
        ["tcp://192.0.2.1:5555", "tcp://192.0.2.2:5555"],
        hwm=4,
        security=_security(secret_key=keys["robot7"], trainer_key=keys["trainer_public"]),
    ) as sender:
        assert sender.endpoints == ("tcp://192.0.2.1:5555", "tcp://192.0.2.2:5555")
