"""Image bytes and files to uint8 pixels and back: JPEG (encode, decode, and a header parser that reads the
declared size before any decoding) and image files with 16-bit samples scaled by their real depth
(PNG sBIT, Netpbm maxval). Hostile input is a ValueError or None, never a traceback; numpy and OpenCV only.
Fitting frames, the novelty gate and the encoder's input are `agent.core.frames`.
"""

from __future__ import annotations

import re
import struct
from typing import BinaryIO, Optional

import cv2
import numpy as np


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """RGB uint8 HxWx3 (or gray HxWx1) → JPEG bytes (OpenCV works in BGR, so RGB is swapped on the way)."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 and image.shape[2] == 3 else image
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"JPEG encoding failed for an image of shape {image.shape}")
    return buf.tobytes()


# Markers (ITU T.81 table B.1) a frame may carry before its frame header. Only the sequential frame
# headers are accepted: SOF0 (baseline, what OpenCV writes) and SOF1 (extended). A progressive file
# (SOF2) can repeat scans to cost seconds of CPU per message, and the others are rare.
_SOF_ACCEPTED = frozenset({0xC0, 0xC1})
_SOF_OTHER = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} - _SOF_ACCEPTED
_SEGMENTS = frozenset(range(0xE0, 0xF0)) | {0xFE, 0xDB, 0xC4, 0xDD, 0xCC}  # APPn, COM, DQT, DHT, DRI, DAC


def jpeg_size(data: bytes | memoryview) -> tuple[int, int]:
    """(height, width) a JPEG declares in its start-of-frame header, read without decoding.

    Walks the marker segments from SOI to the frame header (ITU T.81, annex B), so a decoder is only
    ever handed an image whose size the caller has checked: a few hundred bytes can declare
    40000x40000 pixels. Strict where decoders are lenient: any byte pair that is not a known marker
    (libjpeg skips such "extraneous bytes" and looks for the next marker, so a size hidden behind
    them would be read by the decoder but not by us) is refused, as are progressive and other
    non-sequential frames. Raises ValueError naming the problem.
    """
    view = memoryview(data).cast("B")
    if len(view) < 4 or view[0] != 0xFF or view[1] != 0xD8:
        raise ValueError("not a JPEG (no start-of-image marker)")
    pos = 2
    while pos + 4 <= len(view):
        if view[pos] != 0xFF:
            raise ValueError(f"JPEG marker expected at byte {pos}")
        marker = view[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            break
        if marker in _SOF_OTHER:
            raise ValueError(f"JPEG frame type 0x{marker:02X} is not baseline or extended sequential (SOF0/SOF1)")
        if marker not in _SOF_ACCEPTED and marker not in _SEGMENTS:
            raise ValueError(f"JPEG has an unexpected marker 0xFF{marker:02X} at byte {pos}")
        length = (view[pos + 2] << 8) | view[pos + 3]
        if length < 2:
            raise ValueError(f"JPEG segment at byte {pos} has length {length}")
        if marker in _SOF_ACCEPTED:
            if pos + 9 > len(view) or length < 7:
                break
            return (view[pos + 5] << 8) | view[pos + 6], (view[pos + 7] << 8) | view[pos + 8]
        pos += 2 + length
    raise ValueError("JPEG has no frame header (SOF) before its scan data or its end")


def decode_jpeg(data: bytes | memoryview, channels: int = 3) -> Optional[np.ndarray]:
    """JPEG bytes → RGB uint8 HxWx3 (`channels=1`: gray HxWx1), or None if the bytes are not a decodable image.

    Check `jpeg_size` first when the bytes come from outside: this decodes whatever size they
    declare (up to OpenCV's own pixel limit, past which it also returns None). EXIF orientation
    is ignored, so the decoded shape is the declared one.
    """
    arr = np.frombuffer(data, dtype=np.uint8)
    if arr.size == 0:
        return None
    try:
        flags = cv2.IMREAD_COLOR if channels == 3 else cv2.IMREAD_GRAYSCALE
        bgr = cv2.imdecode(arr, flags | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:  # OpenCV raises (rather than returning None) for sizes past CV_IO_MAX_IMAGE_PIXELS
        return None
    if bgr is None:
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if channels == 3 else bgr[..., None]


def read_image_bgr(path: str, bit_depth: Optional[int] = None) -> Optional[np.ndarray]:
    """An image file as uint8 HxWx3 BGR, or None when it cannot be decoded.

    OpenCV raises rather than returning None for some files (a header declaring more pixels than its
    CV_IO_MAX_IMAGE_PIXELS limit): that is None too, so a hostile file is a skip, never a traceback.

    Images with 16-bit samples are scaled to 0-255 by the depth of their data, v x 255 / (2^depth - 1)
    rounded and clipped (OpenCV alone keeps the top 8 bits, so 12-bit values 0-4095 came out as 0-15):
    `bit_depth` (8-16) when given, which says the samples are that many bits, unscaled; otherwise
    `sample_depth` of the file (a PGM/PPM's maxval, a PNG's sBIT when its samples are unscaled), else
    the container's 16. Other depths (float TIFF, ...) keep OpenCV's own 8-bit conversion.
    """
    try:
        image = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
        if image is not None and image.dtype not in (np.uint8, np.uint16):
            image = cv2.imread(path, cv2.IMREAD_COLOR)
    except cv2.error:
        return None
    if image is None or image.dtype == np.uint8:
        return image
    if bit_depth is None:
        maxval = sample_maxval(path, image)
    else:
        if not 8 <= bit_depth <= 16:
            raise ValueError(f"bit_depth must be in 8..16, got {bit_depth}")
        maxval = (1 << bit_depth) - 1
    return cv2.convertScaleAbs(image, alpha=255.0 / maxval)  # rounds and saturates to uint8


def sample_maxval(path: str, image: np.ndarray) -> int:
    """The value that stands for full scale in a 16-bit `image` read from `path`: 65535 unless the file says less.

    - PGM/PPM (Netpbm): the header's maxval, which defines the range (OpenCV returns the samples unscaled).
    - PNG with an sBIT chunk of b < 16 significant bits (the largest over the colour channels): the PNG
      specification (1.2, sections 4.2.6 and 9.1) has encoders scale such samples up to 16 bits, so
      sBIT alone does not change full scale; but when every sample is below 2^b the writer stored them
      unscaled, and full scale is 2^b - 1. (A conforming file with every sample below 2^b would have
      to be almost black, under 2^(2b-16) of 2^b - 1; it would come out 2^(16-b) times brighter.)
    Anything else, or a header that cannot be read: 65535.
    """
    full = 65535
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if head[:2] in (b"P2", b"P3", b"P5", b"P6"):
                maxval = _netpbm_maxval(head + f.read(1024))
            elif head == _PNG_SIGNATURE:
                bits = _png_sbit(f)
                maxval = (1 << bits) - 1 if bits is not None and int(image.max()) < (1 << bits) else None
            else:
                maxval = None
    except OSError:
        return full
    return maxval if maxval is not None and 255 <= maxval <= full else full


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 1, 6: 3}  # colour type -> colour channels (sBIT's alpha byte is ignored)


def _png_sbit(f: BinaryIO) -> Optional[int]:
    """Significant bits from a PNG's sBIT chunk (the most over the colour channels), or None.

    Reads chunk headers from after the signature until IDAT, seeking over the rest; sBIT must come
    before IDAT (PNG 1.2, section 4.2.6). None for a missing, malformed or out-of-range chunk.
    """
    colour_type = None
    for _ in range(256):  # a hostile file cannot make this walk long
        header = f.read(8)
        if len(header) < 8:
            return None
        length, kind = struct.unpack(">I4s", header)
        if kind in (b"IDAT", b"IEND") or length > 1 << 24:
            return None
        if kind == b"IHDR" and length == 13:
            ihdr = f.read(13)
            if len(ihdr) < 13:
                return None
            colour_type = ihdr[9]
            f.seek(4, 1)
            continue
        if kind == b"sBIT" and colour_type in _PNG_CHANNELS and 1 <= length <= 4:
            bits = max(f.read(length)[: _PNG_CHANNELS[colour_type]], default=0)
            return bits if 1 <= bits < 16 else None
        f.seek(length + 4, 1)
    return None


def _netpbm_maxval(head: bytes) -> Optional[int]:
    """maxval from a P2/P3/P5/P6 header (magic, width, height, maxval; '#' starts a comment to the line's end)."""
    text = re.sub(rb"#[^\n\r]*", b" ", head[2:])
    fields = text.split(maxsplit=3)
    if len(fields) < 3 or not fields[2].isdigit():
        return None
    return int(fields[2])


def bgr_to_rgb(image: np.ndarray) -> np.ndarray:
    """OpenCV's BGR / BGRA / grayscale output → contiguous RGB uint8 HxWx3."""
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
