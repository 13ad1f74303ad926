"""The wire format: one frame = one ZeroMQ message = a fixed little-endian header, then the payload.

A single message (not multipart) is what ZeroMQ queues, drops and filters as a unit, and the header
starts with magic + version + camera id so a SUB can subscribe to one camera by prefix (and a
latest-frame reader can tell cameras apart without decoding, `peek_camera_id`). Nothing is
pickled: a receiver only ever unpacks fixed-size integers and image bytes, and every malformed,
truncated or foreign message becomes a `WireError` the receiver can count and drop.

Header layout (40 bytes, little-endian):

    offset size  field
    0      4     magic b"BYOF"
    4      1     version (1)
    5      2     camera_id (u16)
    7      1     encoding (0 = raw RGB, 1 = JPEG, 2 = end of stream: no image, 0x0x0, empty payload)
    8      8     seq (u64, per camera, counts frames sent)
    16     8     timestamp (f64, s: a recording's own clock, else time.time() at grab)
    24     4     height (u32)
    28     4     width (u32)
    32     1     channels (u8: 3 = RGB, 1 = gray)
    33     3     reserved (ignored)
    36     4     payload length (u32)

An end-of-stream message says that a camera's finite source (a file, a folder) has ended; its `seq`
is the number of frames that camera sent. A trainer whose cameras have all ended trains on what it
holds instead of waiting for more. Receivers that predate it count it as malformed and go on.

Limits: a receiver accepts sides up to its `max_side` (default and ceiling `MAX_SIDE`, the largest
frame the config allows a capture to store), so no message it accepts exceeds
`max_message_bytes(max_side)`: a JPEG is never larger than its raw image (the sender falls back to
raw), and a JPEG's declared size is read from its own header and checked before decoding.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np

from agent.core.image_codecs import decode_jpeg, encode_jpeg, jpeg_size

MAGIC = b"BYOF"
VERSION = 1
ENCODING_RAW = 0
ENCODING_JPEG = 1
ENCODING_END = 2
_ENCODINGS = {ENCODING_RAW: "raw", ENCODING_JPEG: "jpeg", ENCODING_END: "end of stream"}

_HEADER = struct.Struct("<4sBHBQdIIB3xI")
HEADER_SIZE = _HEADER.size
_PREFIX = struct.Struct("<4sBH")
MAX_SIDE = 4096  # px: the largest height or width a capture may store (config.capture.height/width)
CHANNELS = (1, 3)  # gray (a mono camera, `capture.channels: 1`) or RGB

Buffer = Union[bytes, bytearray, memoryview]


class WireError(ValueError):
    """A message is not a valid frame of a version this build understands."""


@dataclass(frozen=True, eq=False)
class Frame:
    """One captured image with where and when it came from.

    `image` is uint8 HxWx3 RGB, or HxWx1 gray from a mono camera. A decoded raw frame is a read-only
    view on the received message (no copy): copy it into your own storage before writing to it.
    Frames compare by identity.
    """

    camera_id: int
    seq: int
    timestamp: float
    image: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class EndOfStream:
    """Camera `camera_id`'s source has ended after sending `seq` frames (at `timestamp`, time.time())."""

    camera_id: int
    seq: int
    timestamp: float


def encode_end_of_stream(camera_id: int, frames_sent: int, timestamp: float) -> bytes:
    """The end-of-stream message of one camera; ValueError for an id that does not fit in 16 bits."""
    if not 0 <= camera_id <= 0xFFFF:
        raise ValueError(f"camera_id must fit in 16 bits, got {camera_id}")
    return _HEADER.pack(MAGIC, VERSION, camera_id, ENCODING_END, frames_sent, timestamp, 0, 0, 0, 0)


def subscription_prefix(camera_id: Optional[int] = None) -> bytes:
    """Leading bytes shared by every message of this version (and of one camera, if given)."""
    if camera_id is None:
        return MAGIC + bytes([VERSION])
    return _PREFIX.pack(MAGIC, VERSION, camera_id)


def peek_camera_id(buf: Buffer) -> int:
    """The camera id of a message of this version, read from its first 7 bytes without decoding the rest.

    For a reader that keeps only the newest message per camera and decodes just the ones it uses
    (`decode_frame` still validates those in full). Raises WireError for a short or foreign message.
    """
    view = memoryview(buf).cast("B")
    if len(view) < _PREFIX.size:
        raise WireError(f"message of {len(view)} bytes is shorter than the {HEADER_SIZE}-byte header")
    magic, version, camera_id = _PREFIX.unpack_from(view)
    if magic != MAGIC or version != VERSION:
        raise WireError(f"foreign message or unsupported wire version (magic {bytes(magic)!r}, version {version})")
    return camera_id


def _header(frame: Frame, jpeg_quality: Optional[int]) -> tuple[bytes, Optional[bytes]]:
    """Validate and pack the header; returns it with the JPEG payload (None: the payload is the raw image)."""
    image = frame.image
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in CHANNELS:
        raise ValueError(f"frame image must be uint8 HxWx3 (RGB) or HxWx1 (gray), got {image.dtype} {image.shape}")
    if not 0 <= frame.camera_id <= 0xFFFF:
        raise ValueError(f"camera_id must fit in 16 bits, got {frame.camera_id}")
    height, width, channels = image.shape
    jpeg = None if jpeg_quality is None else encode_jpeg(image, jpeg_quality)
    if jpeg is not None and len(jpeg) >= image.nbytes:  # noise does not compress: raw bounds every message
        jpeg = None
    encoding, length = (ENCODING_RAW, image.nbytes) if jpeg is None else (ENCODING_JPEG, len(jpeg))
    header = _HEADER.pack(
        MAGIC, VERSION, frame.camera_id, encoding, frame.seq, frame.timestamp, height, width, channels, length
    )
    return header, jpeg


def encode_frame(frame: Frame, jpeg_quality: Optional[int] = None) -> bytes:
    """Serialise a frame; `jpeg_quality` (1–100) sends JPEG instead of raw RGB."""
    header, jpeg = _header(frame, jpeg_quality)
    payload = np.ascontiguousarray(frame.image).data.cast("B") if jpeg is None else jpeg
    return b"".join((header, payload))


class FrameEncoder:
    """Serialises frames into one reused buffer, for a sender that copies each message out at once.

    A fresh multi-megabyte object per frame costs page faults on every allocation: measured here at
    640×480, it more than doubled loopback latency. The returned view is overwritten by the next
    call, so send it with copy=True (never zero-copy).
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def encode(self, frame: Frame, jpeg_quality: Optional[int] = None) -> memoryview:
        header, jpeg = _header(frame, jpeg_quality)
        size = HEADER_SIZE + (frame.image.nbytes if jpeg is None else len(jpeg))
        if len(self._buf) < size:
            self._buf = bytearray(size)  # a new object: views handed out earlier stay valid
        view = memoryview(self._buf)[:size]
        view[:HEADER_SIZE] = header
        if jpeg is None and frame.image.flags.c_contiguous:
            view[HEADER_SIZE:] = frame.image.data.cast("B")
        elif jpeg is None:
            slot = np.frombuffer(self._buf, np.uint8, count=frame.image.nbytes, offset=HEADER_SIZE)
            slot.reshape(frame.image.shape)[...] = frame.image
        else:
            view[HEADER_SIZE:] = jpeg
        return view


def max_message_bytes(max_side: int = MAX_SIDE) -> int:
    """The largest valid message whose sides are at most `max_side` px (header + raw RGB)."""
    return HEADER_SIZE + max_side * max_side * 3


def decode_frame(buf: Buffer, max_side: int = MAX_SIDE) -> Frame:
    """Parse one frame message; raises WireError naming the problem for anything that is not a valid frame
    (an end-of-stream message included: readers that take them use `decode_message`).

    Frames with a side over `max_side` px are refused from the header, before any decoding or
    allocation; a JPEG is decoded only when the size in its own frame header equals the message's.
    """
    message = decode_message(buf, max_side)
    if isinstance(message, EndOfStream):
        raise WireError(f"end-of-stream message of camera {message.camera_id}, not a frame")
    return message


def decode_message(buf: Buffer, max_side: int = MAX_SIDE) -> Union[Frame, EndOfStream]:
    """Parse one message: a `Frame`, or an `EndOfStream`; WireError (as `decode_frame`) for anything else."""
    view = memoryview(buf).cast("B")
    if len(view) < HEADER_SIZE:
        raise WireError(f"message of {len(view)} bytes is shorter than the {HEADER_SIZE}-byte header")
    magic, version, camera_id, encoding, seq, timestamp, height, width, channels, length = _HEADER.unpack_from(view)
    if magic != MAGIC:
        raise WireError(f"foreign message: magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise WireError(f"unsupported wire version {version} (this build reads version {VERSION})")
    if encoding not in _ENCODINGS:
        raise WireError(f"unknown encoding {encoding}")
    if encoding == ENCODING_END:
        if (
            (height, width, channels, length) != (0, 0, 0, 0)
            or len(view) != HEADER_SIZE
            or not math.isfinite(timestamp)
        ):
            raise WireError("malformed end-of-stream message (it carries no image)")
        return EndOfStream(camera_id=camera_id, seq=seq, timestamp=timestamp)
    if channels not in CHANNELS or height == 0 or width == 0:
        raise WireError(f"bad image shape {height}x{width}x{channels}")
    if height > max_side or width > max_side:
        raise WireError(f"frame of {height}x{width} exceeds the {max_side} px side limit (wire.max_frame_side)")
    if not math.isfinite(timestamp):
        raise WireError("timestamp is not a finite number")
    if length != len(view) - HEADER_SIZE:
        raise WireError(f"payload is {len(view) - HEADER_SIZE} bytes but the header says {length}")
    payload = view[HEADER_SIZE:]
    if encoding == ENCODING_RAW:
        if length != height * width * channels:
            raise WireError(f"raw payload of {length} bytes does not hold a {height}x{width}x{channels} image")
        image: np.ndarray = np.frombuffer(payload, dtype=np.uint8).reshape(height, width, channels)
    else:
        try:
            declared = jpeg_size(payload)
        except ValueError as exc:
            raise WireError(f"JPEG payload is malformed: {exc}") from None
        if declared != (height, width):
            raise WireError(f"JPEG declares {declared[0]}x{declared[1]}, header says {height}x{width}")
        decoded = decode_jpeg(payload, channels)
        if decoded is None:
            raise WireError("JPEG payload cannot be decoded")
        image = decoded
        if image.shape != (height, width, channels):
            raise WireError(f"JPEG decodes to {image.shape}, header says {(height, width, channels)}")
    return Frame(camera_id=camera_id, seq=seq, timestamp=timestamp, image=image)
