"""Image messages of robot logs as RGB: which message types are images, their encodings, pixels and stamps.

Messages read: ROS 2 `sensor_msgs/msg/Image` and `CompressedImage` (CDR), ROS 1 `sensor_msgs/Image` and
`CompressedImage`, and Foxglove's `RawImage` / `CompressedImage` in the three encodings the MCAP ecosystem
writes them in: protobuf (`foxglove.RawImage`, what the Foxglove SDK writes), JSON (`jsonschema`) and
ros2msg (`foxglove_msgs/msg/RawImage`). Pixel encodings (`RAW_ENCODINGS`): rgb8, bgr8, rgba8, bgra8,
mono8, mono16, the four 8-bit Bayer patterns, yuv422 / uyvy, yuyv / yuv422_yuy2; compressed JPEG and
PNG. Any other encoding is skipped and counted, with one warning per topic naming it; a log expanded
into all its image topics leaves out a topic whose images are all in another encoding. A message whose
bytes do not hold the image it declares is skipped and counted too.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from agent.core.image_codecs import decode_jpeg

IMAGE_TYPES = frozenset(
    {  # schema / message type names of image topics (ROS 2, ROS 1, Foxglove protobuf/JSON, ros2msg)
        "sensor_msgs/msg/Image",
        "sensor_msgs/Image",
        "sensor_msgs/msg/CompressedImage",
        "sensor_msgs/CompressedImage",
        "foxglove.RawImage",
        "foxglove.CompressedImage",
        "foxglove_msgs/msg/RawImage",
        "foxglove_msgs/msg/CompressedImage",
    }
)
BYTES_PER_PIXEL = {
    "rgb8": 3,
    "bgr8": 3,
    "rgba8": 4,
    "bgra8": 4,
    "mono8": 1,
    "mono16": 2,
    "bayer_rggb8": 1,
    "bayer_bggr8": 1,
    "bayer_gbrg8": 1,
    "bayer_grbg8": 1,
    "yuv422": 2,
    "uyvy": 2,
    "yuyv": 2,
    "yuv422_yuy2": 2,
}
RAW_ENCODINGS = tuple(BYTES_PER_PIXEL)
COMPRESSED_FORMATS = ("jpeg", "jpg", "png")


class UnsupportedEncoding(ValueError):
    """An image message in a pixel encoding or compressed format this reader does not convert."""


def message_to_rgb(msg: Any) -> np.ndarray:
    """An image message (any of the libraries' decoded forms) as uint8 HxWx3 RGB.

    Raises UnsupportedEncoding for an encoding or format outside RAW_ENCODINGS / COMPRESSED_FORMATS and
    ValueError for a message whose bytes do not hold the image it declares."""
    if hasattr(msg, "format"):  # CompressedImage (ROS or Foxglove)
        fmt = str(msg.format).lower()
        if "compresseddepth" in fmt or not any(name in fmt for name in COMPRESSED_FORMATS):
            raise UnsupportedEncoding(str(msg.format) or "(empty format)")
        rgb = decode_jpeg(bytes(msg.data))  # OpenCV's imdecode: JPEG and PNG alike
        if rgb is None:
            raise ValueError(f"its {msg.format} data does not decode")
        return rgb
    encoding = str(msg.encoding)
    if encoding not in RAW_ENCODINGS:
        raise UnsupportedEncoding(encoding or "(empty encoding)")
    from rosbags.image import image_to_cvimage

    height, width = int(msg.height), int(msg.width)
    row = width * BYTES_PER_PIXEL[encoding]
    step = int(getattr(msg, "step", 0) or row)
    data = np.frombuffer(memoryview(msg.data), np.uint8)
    if height <= 0 or width <= 0 or step < row or data.size < (height - 1) * step + row:
        raise ValueError(f"{encoding} {width}x{height} (step {step}) does not fit its {data.size} bytes")
    if step != row or data.size != height * row:  # rows padded to `step`, which rosbags-image does not read
        data = np.ascontiguousarray(np.lib.stride_tricks.as_strided(data, (height, row), (step, 1))).reshape(-1)
    unpadded = SimpleNamespace(
        encoding=encoding,
        height=height,
        width=width,
        step=row,
        data=data,
        is_bigendian=int(getattr(msg, "is_bigendian", 0) or 0),
    )
    # a namespace with the Image fields it reads (duck-typed; its stub names the ROS message class)
    rgb = image_to_cvimage(unpadded, "rgb8")  # type: ignore[arg-type]
    return np.ascontiguousarray(rgb)  # OpenCV's conversions, 16 bit scaled to 8


def stamp_ns(msg: Any) -> int:
    """The message's own stamp in ns (ROS header.stamp, Foxglove timestamp); 0 when it has none."""
    header = getattr(msg, "header", None)
    stamp = getattr(header, "stamp", None) if header is not None else getattr(msg, "timestamp", None)
    if stamp is None:
        return 0
    sec = getattr(stamp, "sec", None)
    if sec is None:
        sec = getattr(stamp, "seconds", 0)  # google.protobuf.Timestamp
    nsec = getattr(stamp, "nanosec", None)
    if nsec is None:
        nsec = getattr(stamp, "nanos", getattr(stamp, "nsec", 0))
    return int(sec or 0) * 1_000_000_000 + int(nsec or 0)


def is_supported(msg: Any) -> bool:
    """Would `message_to_rgb` try this message's encoding (without converting its pixels)?"""
    if hasattr(msg, "format"):
        fmt = str(msg.format).lower()
        return "compresseddepth" not in fmt and any(name in fmt for name in COMPRESSED_FORMATS)
    return str(getattr(msg, "encoding", "")) in RAW_ENCODINGS


def encoding_of(msg: Any) -> str:
    return str(msg.format if hasattr(msg, "format") else getattr(msg, "encoding", "")) or "(empty encoding)"
