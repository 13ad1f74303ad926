"""Wire format: every encoding round-trips; anything malformed is a WireError, never a crash or a pickle."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from agent.core.image_codecs import encode_jpeg
from agent.core.wire import (
    HEADER_SIZE,
    MAGIC,
    Frame,
    FrameEncoder,
    WireError,
    decode_frame,
    encode_frame,
    max_message_bytes,
    subscription_prefix,
)


def _frame(camera_id: int = 3, seq: int = 41, h: int = 24, w: int = 32) -> Frame:
    rng = np.random.default_rng(seq)
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return Frame(camera_id=camera_id, seq=seq, timestamp=1_700_000_000.25, image=image)


def test_raw_round_trip_is_exact() -> None:
    frame = _frame()
    out = decode_frame(encode_frame(frame))
    assert (out.camera_id, out.seq, out.timestamp) == (3, 41, 1_700_000_000.25)
    assert out.image.dtype == np.uint8 and out.image.shape == (24, 32, 3)
    np.testing.assert_array_equal(out.image, frame.image)


def test_raw_round_trip_from_memoryview_and_non_contiguous_image() -> None:
    base = _frame(h=24, w=64).image
    frame = Frame(camera_id=0, seq=0, timestamp=0.0, image=base[:, ::2])
    out = decode_frame(memoryview(encode_frame(frame)))
    np.testing.assert_array_equal(out.image, base[:, ::2])


def test_jpeg_round_trip_is_close() -> None:
    yy, xx = np.mgrid[0:48, 0:64]
    image = np.stack([xx * 4, yy * 5, (xx + yy) * 2], axis=-1).astype(np.uint8)
    frame = Frame(camera_id=65535, seq=2**63, timestamp=12.5, image=image)
    data = encode_frame(frame, jpeg_quality=95)
    assert len(data) < HEADER_SIZE + image.nbytes
    out = decode_frame(data)
    assert (out.camera_id, out.seq, out.timestamp) == (65535, 2**63, 12.5)
    assert out.image.shape == image.shape
    assert np.abs(out.image.astype(int) - image).mean() < 3.0


def test_header_starts_with_camera_prefix() -> None:
    data = encode_frame(_frame(camera_id=7))
    assert data.startswith(subscription_prefix(7))
    assert data.startswith(subscription_prefix(None))
    assert not data.startswith(subscription_prefix(8))


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda b: b"", "shorter"),
        (lambda b: b[: HEADER_SIZE - 1], "shorter"),
        (lambda b: b[:-1], "payload"),
        (lambda b: b + b"x", "payload"),
        (lambda b: b"XXXX" + b[4:], "foreign"),
        (lambda b: b[:4] + bytes([9]) + b[5:], "version"),
        (lambda b: b[:7] + bytes([7]) + b[8:], "encoding"),
        (lambda b: b[:32] + bytes([4]) + b[33:], "shape"),
        (lambda b: b[:24] + struct.pack("<I", 0) + b[28:], "shape"),
        (lambda b: b[:16] + struct.pack("<d", float("nan")) + b[24:], "timestamp"),
        (lambda b: b[:24] + struct.pack("<I", 12) + b[28:], "raw payload"),
    ],
)
def test_malformed_messages_raise_wire_error(mutate, reason: str) -> None:
    with pytest.raises(WireError, match=reason):
        decode_frame(mutate(encode_frame(_frame())))


def test_undecodable_jpeg_and_wrong_jpeg_shape() -> None:
    good = encode_frame(_frame(), jpeg_quality=80)
    garbage = good[:HEADER_SIZE] + bytes(len(good) - HEADER_SIZE)
    with pytest.raises(WireError, match="JPEG"):
        decode_frame(garbage)
    lying = good[:24] + struct.pack("<I", 25) + good[28:]
    with pytest.raises(WireError, match="JPEG declares 24x32, header says 25x32"):
        decode_frame(lying)


def test_random_garbage_never_escapes_as_another_error() -> None:
    rng = np.random.default_rng(0)
    for size in (0, 1, 39, 40, 41, 500):
        with pytest.raises(WireError):
            decode_frame(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    with pytest.raises(WireError):
        decode_frame(MAGIC + bytes(100))


def test_wire_error_is_a_value_error_and_encode_validates() -> None:
    assert issubclass(WireError, ValueError)
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        encode_frame(Frame(0, 0, 0.0, np.zeros((4, 4), np.uint8)))
    with pytest.raises(ValueError, match="16 bits"):
        encode_frame(Frame(70000, 0, 0.0, np.zeros((4, 4, 3), np.uint8)))


def test_frame_encoder_reuses_its_buffer_and_matches_encode_frame() -> None:
    encoder = FrameEncoder()
    small, big = _frame(seq=1, h=8, w=8), _frame(seq=2, h=24, w=32)
    first = encoder.encode(big)
    assert bytes(first) == encode_frame(big)
    again = encoder.encode(small)  # fits: written into the same buffer
    assert bytes(again) == encode_frame(small)
    assert decode_frame(again).seq == 1
    jpeg = encoder.encode(big, jpeg_quality=90)
    assert decode_frame(jpeg).image.shape == (24, 32, 3)
    strided = Frame(0, 5, 1.0, big.image[:, ::2])
    np.testing.assert_array_equal(decode_frame(encoder.encode(strided)).image, big.image[:, ::2])


def _sof_patched(jpeg: bytes, height: int, width: int) -> bytes:
    """The JPEG with its SOF0 marker declaring height x width (the scan data is left as it is)."""
    at = jpeg.index(b"\xff\xc0")
    return jpeg[: at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9 :]


def _jpeg_message(jpeg: bytes, height: int, width: int) -> bytes:
    header = encode_frame(_frame(h=8, w=8))[:HEADER_SIZE]
    header = header[:24] + struct.pack("<II", height, width) + header[32:36] + struct.pack("<I", len(jpeg))
    return header[:7] + bytes([1]) + header[8:] + jpeg


def test_jpeg_bomb_is_refused_from_its_header_before_decoding() -> None:
    """A ~900-byte message whose JPEG declares 40000x40000 once made OpenCV raise (and kill the trainer)."""
    small = encode_jpeg(np.full((8, 8, 3), 128, np.uint8), 90)
    bomb = _sof_patched(small, 40000, 40000)
    assert len(bomb) < 1000
    with pytest.raises(WireError, match="JPEG declares 40000x40000"):
        decode_frame(_jpeg_message(bomb, 8, 8))
    big = _sof_patched(small, 16000, 16000)  # agrees with its header, but past the receiver's limit
    with pytest.raises(WireError, match="exceeds the 1024 px"):
        decode_frame(_jpeg_message(big, 16000, 16000), max_side=1024)


def test_jpeg_without_a_frame_header_or_truncated_is_a_wire_error() -> None:
    small = encode_jpeg(np.full((8, 8, 3), 128, np.uint8), 90)
    for payload in (small[:2], small[:20], b"\xff\xd8\xff\xda" + bytes(30), b"\xff\xd8" + b"\xff" * 50):
        with pytest.raises(WireError, match="JPEG"):
            decode_frame(_jpeg_message(payload, 8, 8))


def test_max_side_refuses_large_raw_frames_and_bounds_the_message() -> None:
    data = encode_frame(_frame(h=24, w=32))
    with pytest.raises(WireError, match="exceeds the 16 px"):
        decode_frame(data, max_side=16)
    assert decode_frame(data, max_side=32).image.shape == (24, 32, 3)
    assert max_message_bytes(32) == HEADER_SIZE + 32 * 32 * 3


def test_a_jpeg_larger_than_the_raw_image_is_sent_raw() -> None:
    """Noise does not compress: the sender falls back to raw, so no message exceeds max_message_bytes."""
    frame = _frame(h=16, w=16)
    data = encode_frame(frame, jpeg_quality=100)
    assert len(data) <= max_message_bytes(16)
    np.testing.assert_array_equal(decode_frame(data).image, frame.image)


def test_a_size_hidden_behind_bytes_the_decoder_skips_is_refused() -> None:
    """Review find: `FF 00` read as a segment hid the real SOF (4000x4000) behind a fake 8x8 one in an APP1."""
    real = encode_jpeg(np.full((8, 8, 3), 90, np.uint8), 90)
    at = real.index(b"\xff\xc0")
    big_sof = (
        real[at : at + 5]
        + struct.pack(">HH", 4000, 4000)
        + real[at + 9 : at + 2 + struct.unpack(">H", real[at + 2 : at + 4])[0]]
    )
    fake_sof = real[at : at + 2 + struct.unpack(">H", real[at + 2 : at + 4])[0]]  # declares 8x8
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + len(fake_sof)) + fake_sof
    hidden = b"\xff\x00" + struct.pack(">H", 2 + len(big_sof)) + big_sof  # libjpeg: garbage, then the SOF
    bomb = real[:2] + hidden + app1 + real[2:at] + real[at + 2 + len(fake_sof) - 2 :]
    with pytest.raises(WireError, match="unexpected marker 0xFF00"):
        decode_frame(_jpeg_message(bomb, 8, 8))


def test_progressive_jpegs_are_refused_before_decoding() -> None:
    import cv2

    ok, progressive = cv2.imencode(".jpg", np.full((8, 8, 3), 90, np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    with pytest.raises(WireError, match="not baseline or extended sequential"):
        decode_frame(_jpeg_message(progressive.tobytes(), 8, 8))


def test_end_of_stream_round_trips_and_is_not_a_frame() -> None:
    from agent.core.wire import EndOfStream, decode_message, encode_end_of_stream

    data = encode_end_of_stream(7, 250, 123.5)
    assert len(data) == HEADER_SIZE
    assert decode_message(data) == EndOfStream(camera_id=7, seq=250, timestamp=123.5)
    with pytest.raises(WireError, match="end-of-stream"):
        decode_frame(data)  # readers of frames only (a latest-frame subscriber) never get one
    with pytest.raises(WireError, match="end-of-stream"):
        decode_message(data + b"x")  # an end marker carries no payload
    with pytest.raises(ValueError):
        encode_end_of_stream(70000, 1, 0.0)
