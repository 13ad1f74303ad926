"""Robot logs written by the ecosystem's own writers, for the tests: mcap + mcap-ros2-support, rosbags (rosbag2
sqlite3 / mcap, ROS 1), mcap's plain writer for Foxglove's protobuf and JSON schemas.

`encode_image(rgb, encoding)` turns an RGB test image into the raw bytes of a ROS image encoding (the
inverse of what the reader does), so the tests compare the pixels read back with the source image.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Iterable, Optional, Union

import cv2
import numpy as np

T0_NS = 1_700_000_000_000_000_000  # the logs' first header stamp
BAYER_OFFSETS = {
    "rggb": ((0, 0), (0, 1), (1, 0), (1, 1)),
    "bggr": ((1, 1), (0, 1), (1, 0), (0, 0)),
    "gbrg": ((1, 0), (0, 0), (1, 1), (0, 1)),
    "grbg": ((0, 1), (0, 0), (1, 1), (1, 0)),
}


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB test image (gradients plus a seeded tint): demosaicing and chroma subsampling keep it."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    tint = np.random.default_rng(seed).integers(0, 60, 3)
    r = 30 + 190 * xx / max(w - 1, 1)
    g = 40 + 170 * yy / max(h - 1, 1)
    b = 220 - 150 * (xx + yy) / max(w + h - 2, 1)
    return np.clip(np.dstack([r, g, b]) + tint, 0, 255).astype(np.uint8)


def encode_image(rgb: np.ndarray, encoding: str) -> tuple[bytes, int]:
    """(data, step) of `rgb` in a ROS pixel encoding."""
    h, w, _ = rgb.shape
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if encoding in ("rgb8", "bgr8", "rgba8", "bgra8"):
        code = {"rgb8": None, "bgr8": cv2.COLOR_RGB2BGR, "rgba8": cv2.COLOR_RGB2RGBA, "bgra8": cv2.COLOR_RGB2BGRA}[
            encoding
        ]
        out = rgb if code is None else cv2.cvtColor(rgb, code)
        return out.tobytes(), w * out.shape[2]
    if encoding == "mono8":
        return gray.tobytes(), w
    if encoding == "mono16":
        return (gray.astype("<u2") * 257).tobytes(), 2 * w
    if encoding.startswith("bayer_"):
        pattern = encoding[len("bayer_") : -1]
        (ry, rx), (g1y, g1x), (g2y, g2x), (by, bx) = BAYER_OFFSETS[pattern]
        mosaic = np.empty((h, w), np.uint8)
        mosaic[ry::2, rx::2] = rgb[ry::2, rx::2, 0]
        mosaic[g1y::2, g1x::2] = rgb[g1y::2, g1x::2, 1]
        mosaic[g2y::2, g2x::2] = rgb[g2y::2, g2x::2, 1]
        mosaic[by::2, bx::2] = rgb[by::2, bx::2, 2]
        return mosaic.tobytes(), w
    if encoding in ("yuv422", "uyvy", "yuyv", "yuv422_yuy2"):
        i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)  # BT.601 video range: what OpenCV's 4:2:2 decoders invert
        y = i420[:h]
        u = np.repeat(i420[h : h + h // 4].reshape(h // 2, w // 2), 2, axis=0)
        v = np.repeat(i420[h + h // 4 :].reshape(h // 2, w // 2), 2, axis=0)
        out = np.empty((h, w, 2), np.uint8)
        if encoding in ("yuv422", "uyvy"):
            out[:, 0::2, 0], out[:, 1::2, 0], out[..., 1] = u, v, y
        else:
            out[..., 0], out[:, 0::2, 1], out[:, 1::2, 1] = y, u, v
        return out.tobytes(), 2 * w
    if encoding == "32FC1":
        return gray.astype(np.float32).tobytes(), 4 * w
    raise ValueError(encoding)


def compress(rgb: np.ndarray, fmt: str) -> bytes:
    ok, buf = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def ros2_typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


def ros2_image(ts, rgb: np.ndarray, encoding: str, stamp_ns: int):
    """A rosbags `sensor_msgs/msg/Image` (encoding != "jpeg"/"png") or `CompressedImage` of `rgb`."""
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    header = Header(stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id="cam")
    if encoding in ("jpeg", "png"):
        data = np.frombuffer(compress(rgb, encoding), np.uint8)
        return ts.types["sensor_msgs/msg/CompressedImage"](header=header, format=encoding, data=data)
    data, step = encode_image(rgb, encoding)
    h, w, _ = rgb.shape
    return ts.types["sensor_msgs/msg/Image"](
        header=header,
        height=h,
        width=w,
        encoding=encoding,
        is_bigendian=0,
        step=step,
        data=np.frombuffer(data, np.uint8),
    )


def write_mcap_ros2(
    path: Path,
    topics: dict[str, tuple[Union[str, list[str]], list[np.ndarray]]],
    period_ns: int = 100_000_000,
    strings: Optional[str] = None,
    header_stamps: bool = True,
    chunk_size: int = 256 * 1024,
) -> None:
    """An MCAP (profile ros2) by mcap-ros2-support's writer: per topic (encoding, frames), frame i of every topic
    stamped T0 + i x period (log time 1 ms later; header stamp 0 when not `header_stamps`); `strings`: a
    std_msgs/msg/String topic beside them."""
    from mcap_ros2.writer import Writer

    ts = ros2_typestore()
    with open(path, "wb") as f:
        writer = Writer(f, chunk_size=chunk_size)
        schemas = {}
        for name in ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage", "std_msgs/msg/String"):
            schemas[name] = writer.register_msgdef(name, ts.generate_msgdef(name, ros_version=2)[0])
        n = max(len(frames) for _, frames in topics.values())
        for i in range(n):
            stamp = T0_NS + i * period_ns
            for topic, (encoding, frames) in topics.items():
                if i >= len(frames):
                    continue
                enc = encoding[i] if isinstance(encoding, list) else encoding  # a list: one encoding per frame
                msg = ros2_image(ts, frames[i], enc, stamp if header_stamps else 0)
                writer.write_message(topic, schemas[msg.__msgtype__], _as_dict(msg), log_time=stamp + 1_000_000)
            if strings:
                writer.write_message(strings, schemas["std_msgs/msg/String"], {"data": f"tick {i}"}, log_time=stamp)
        writer.finish()


def _as_dict(msg) -> dict:
    """A rosbags message as the plain dict mcap-ros2-support's writer takes (arrays as bytes)."""
    out = {}
    for name in msg.__dataclass_fields__:
        value = getattr(msg, name)
        if hasattr(value, "__dataclass_fields__"):
            value = _as_dict(value)
        elif isinstance(value, np.ndarray):
            value = value.tobytes()
        out[name] = value
    return out


def write_rosbags(
    path: Path, storage: str, topics: dict[str, tuple[str, list[np.ndarray]]], period_ns: int = 100_000_000
) -> Path:
    """A rosbag2 folder (`storage` "sqlite3" / "mcap") or, for "ros1", a ROS 1 .bag, by rosbags' writers; the
    frames stamped as in `write_mcap_ros2`. Returns the path to give the reader."""
    from rosbags.typesys import Stores, get_typestore

    if storage == "ros1":
        from rosbags.rosbag1 import Writer as Writer1

        ts = get_typestore(Stores.ROS1_NOETIC)
        writer = Writer1(path)
    else:
        from rosbags.rosbag2 import StoragePlugin
        from rosbags.rosbag2 import Writer as Writer2

        ts = ros2_typestore()
        plugin = StoragePlugin.SQLITE3 if storage == "sqlite3" else StoragePlugin.MCAP
        writer = Writer2(path, version=9, storage_plugin=plugin)
    with writer:
        conns = {}
        n = max(len(frames) for _, frames in topics.values())
        for i in range(n):
            stamp = T0_NS + i * period_ns
            for topic, (encoding, frames) in topics.items():
                if i >= len(frames):
                    continue
                msg = _ros_msg(ts, frames[i], encoding, stamp, ros1=storage == "ros1")
                if topic not in conns:
                    conns[topic] = writer.add_connection(topic, msg.__msgtype__, typestore=ts)
                data = (
                    ts.serialize_ros1(msg, msg.__msgtype__)
                    if storage == "ros1"
                    else ts.serialize_cdr(msg, msg.__msgtype__)
                )
                writer.write(conns[topic], stamp + 1_000_000, data)
    return path


def _ros_msg(ts, rgb: np.ndarray, encoding: str, stamp_ns: int, ros1: bool):
    if not ros1:
        return ros2_image(ts, rgb, encoding, stamp_ns)
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    header = Header(seq=0, stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id="cam")
    if encoding in ("jpeg", "png"):
        return ts.types["sensor_msgs/msg/CompressedImage"](
            header=header, format=encoding, data=np.frombuffer(compress(rgb, encoding), np.uint8)
        )
    data, step = encode_image(rgb, encoding)
    h, w, _ = rgb.shape
    return ts.types["sensor_msgs/msg/Image"](
        header=header,
        height=h,
        width=w,
        encoding=encoding,
        is_bigendian=0,
        step=step,
        data=np.frombuffer(data, np.uint8),
    )


def _foxglove_descriptors() -> bytes:
    """A FileDescriptorSet with foxglove.RawImage and foxglove.CompressedImage, field numbers as in Foxglove's
    published schemas (foxglove/RawImage.proto, foxglove/CompressedImage.proto)."""
    from google.protobuf import descriptor_pb2, timestamp_pb2

    fds = descriptor_pb2.FileDescriptorSet()
    timestamp_pb2.DESCRIPTOR.CopyToProto(fds.file.add())
    F = descriptor_pb2.FieldDescriptorProto
    shapes = {
        "RawImage": [
            ("timestamp", 1, F.TYPE_MESSAGE),
            ("frame_id", 7, F.TYPE_STRING),
            ("width", 2, F.TYPE_FIXED32),
            ("height", 3, F.TYPE_FIXED32),
            ("encoding", 4, F.TYPE_STRING),
            ("step", 5, F.TYPE_FIXED32),
            ("data", 6, F.TYPE_BYTES),
        ],
        "CompressedImage": [
            ("timestamp", 1, F.TYPE_MESSAGE),
            ("frame_id", 4, F.TYPE_STRING),
            ("data", 2, F.TYPE_BYTES),
            ("format", 3, F.TYPE_STRING),
        ],
    }
    for name, fields in shapes.items():
        proto = fds.file.add(
            name=f"foxglove/{name}.proto",
            package="foxglove",
            syntax="proto3",
            dependency=["google/protobuf/timestamp.proto"],
        )
        message = proto.message_type.add(name=name)
        for field_name, number, kind in fields:
            field = message.field.add(name=field_name, number=number, type=kind, label=F.LABEL_OPTIONAL)
            if kind == F.TYPE_MESSAGE:
                field.type_name = ".google.protobuf.Timestamp"
    return fds.SerializeToString()


FOXGLOVE_ROS2_DEFS = {
    "foxglove_msgs/msg/RawImage": "builtin_interfaces/Time timestamp\nstring frame_id\nuint32 width\nuint32 height\n"
    "string encoding\nuint32 step\nuint8[] data\n",
    "foxglove_msgs/msg/CompressedImage": (
        "builtin_interfaces/Time timestamp\nstring frame_id\nuint8[] data\nstring format\n"
    ),
}
TIME_DEF = "=" * 80 + "\nMSG: builtin_interfaces/Time\nint32 sec\nuint32 nanosec\n"


def write_mcap_foxglove(
    path: Path, encoding: str, raw: Iterable[np.ndarray], jpegs: Iterable[np.ndarray], period_ns: int = 100_000_000
) -> None:
    """An MCAP of Foxglove images in one of the ecosystem's encodings ("protobuf", "json", "ros2msg"): topic
    /raw holds `foxglove.RawImage` rgb8, topic /jpeg `foxglove.CompressedImage` jpeg."""
    from mcap.writer import Writer

    raw, jpegs = list(raw), list(jpegs)
    with open(path, "wb") as f:
        if encoding == "ros2msg":
            from mcap_ros2.writer import Writer as Ros2Writer

            ros2 = Ros2Writer(f)
            schemas = {name: ros2.register_msgdef(name, text + TIME_DEF) for name, text in FOXGLOVE_ROS2_DEFS.items()}
            for i, (a, b) in enumerate(zip(raw, jpegs)):
                t = T0_NS + i * period_ns
                stamp = {"sec": t // 10**9, "nanosec": t % 10**9}
                ros2.write_message(
                    "/raw",
                    schemas["foxglove_msgs/msg/RawImage"],
                    {
                        "timestamp": stamp,
                        "frame_id": "cam",
                        "width": a.shape[1],
                        "height": a.shape[0],
                        "encoding": "rgb8",
                        "step": a.shape[1] * 3,
                        "data": a.tobytes(),
                    },
                    log_time=t + 1_000_000,
                )
                ros2.write_message(
                    "/jpeg",
                    schemas["foxglove_msgs/msg/CompressedImage"],
                    {"timestamp": stamp, "frame_id": "cam", "data": compress(b, "jpeg"), "format": "jpeg"},
                    log_time=t + 1_000_000,
                )
            ros2.finish()
            return
        writer = Writer(f)
        writer.start(profile="", library="tests")
        if encoding == "protobuf":
            from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

            fds = _foxglove_descriptors()
            pool = descriptor_pool.DescriptorPool()
            for proto in descriptor_pb2.FileDescriptorSet.FromString(fds).file:
                pool.Add(proto)
            cls = {
                n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"foxglove.{n}"))
                for n in ("RawImage", "CompressedImage")
            }
            ids = {n: writer.register_schema(f"foxglove.{n}", "protobuf", fds) for n in cls}
            enc = "protobuf"
        else:
            ids = {
                n: writer.register_schema(f"foxglove.{n}", "jsonschema", json.dumps({"type": "object"}).encode())
                for n in ("RawImage", "CompressedImage")
            }
            enc = "json"
        channels = {
            "/raw": writer.register_channel("/raw", enc, ids["RawImage"]),
            "/jpeg": writer.register_channel("/jpeg", enc, ids["CompressedImage"]),
        }
        for i, (a, b) in enumerate(zip(raw, jpegs)):
            t = T0_NS + i * period_ns
            fields = {
                "/raw": dict(
                    frame_id="cam",
                    width=a.shape[1],
                    height=a.shape[0],
                    encoding="rgb8",
                    step=a.shape[1] * 3,
                    data=a.tobytes(),
                ),
                "/jpeg": dict(frame_id="cam", data=compress(b, "jpeg"), format="jpeg"),
            }
            for topic, body in fields.items():
                if encoding == "protobuf":
                    msg = cls["RawImage" if topic == "/raw" else "CompressedImage"](**body)
                    msg.timestamp.seconds, msg.timestamp.nanos = t // 10**9, t % 10**9
                    data = msg.SerializeToString()
                else:
                    body = dict(
                        body,
                        data=base64.b64encode(body["data"]).decode(),
                        timestamp={"sec": t // 10**9, "nsec": t % 10**9},
                    )
                    data = json.dumps(body).encode()
                writer.add_message(channels[topic], log_time=t + 1_000_000, data=data, publish_time=t)
        writer.finish()
