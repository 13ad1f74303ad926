"""Robot logs as frame sources: MCAP files, rosbag2 folders (sqlite3 or mcap storage) and ROS 1 `.bag` files.

Each image topic of a log is its own camera: `log_camera_specs("drive.mcap")` gives one spec per image
topic (`drive.mcap#/front/image_raw`, `drive.mcap#/rear/image_raw/compressed`), each read by one
`RobotLogSource`; a user may give `PATH#TOPIC` directly, or list topics in
`capture.source_options.robot_log.topics`. Non-image topics are ignored.

Messages read: ROS 2 `sensor_msgs/msg/Image` and `CompressedImage` (CDR), ROS 1 `sensor_msgs/Image` and
`CompressedImage`, and Foxglove's `RawImage` / `CompressedImage` in the three encodings the MCAP ecosystem
writes them in: protobuf (`foxglove.RawImage`, what the Foxglove SDK writes), JSON (`jsonschema`) and
ros2msg (`foxglove_msgs/msg/RawImage`). Pixel encodings (`RAW_ENCODINGS`): rgb8, bgr8, rgba8, bgra8,
mono8, mono16, the four 8-bit Bayer patterns, yuv422 / uyvy, yuyv / yuv422_yuy2; compressed JPEG and
PNG. Any other encoding is skipped and counted, with one warning per topic naming it; a log expanded
into all its image topics leaves out a topic whose images are all in another encoding. A message whose
bytes do not hold the image it declares is skipped and counted too.

Clock: a frame's time is its header stamp (Foxglove: `timestamp`), else the log time when the stamp is
zero or `clock: log` (`media_time_s`, seconds since the epoch); capture puts it on the wire, so
`--pace realtime` follows it and the buffer pairs temporal positives by it. `start_at(n)` skips the
first n deliverable messages of the topic (a resumed replay).

Damage: a log cut short or damaged mid-way (a robot that lost power) gives the frames before the damage,
then ends with one counted error (`errors`) naming the file; a message that does not decode is skipped
and counted. Never a traceback: the libraries raise many types on bad bytes, so those calls catch
`Exception` and turn it into the count.

Libraries, chosen by measurement (benchmarks/bench_log_readers.py, the same 200 + 200 640x480 messages in one
.mcap; benchmarks/RESULTS.md): rosbags decodes CDR 1.2-1.8x faster, but both exceed 500 messages/s (15x a
30 fps camera) and the JPEG path is decode-bound and equal; `mcap` reads an MCAP cut short up to the damage
(rosbags needs its footer) and Foxglove's protobuf / JSON schemas (rosbags reads CDR only). So MCAP files
and mcap rosbag2 folders go through `mcap` + `mcap-ros2-support`; sqlite3 rosbag2 folders, `.db3` files
and ROS 1 bags through `rosbags`, the one candidate that reads them without ROS. Pixels: `rosbags-image`'s
`image_to_cvimage` (OpenCV underneath; rows padded to `step` unpadded first); compressed images: OpenCV's
imdecode. No hand-written CDR or bag parser.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from agent.core.errors import SourceError
from agent.core.image_codecs import decode_jpeg
from agent.robot.source_base import FrameSource, SourceExhausted

log = logging.getLogger(__name__)

MCAP_MAGIC = b"\x89MCAP0\r\n"
ROSBAG1_MAGIC = b"#ROSBAG V2.0\n"
SQLITE_MAGIC = b"SQLite format 3\x00"
LOG_SUFFIXES = (".mcap", ".bag", ".db3")
TOPIC_SEP = "#"

IMAGE_TYPES = frozenset({  # schema / message type names of image topics (ROS 2, ROS 1, Foxglove protobuf/JSON, ros2msg)
    "sensor_msgs/msg/Image", "sensor_msgs/Image", "sensor_msgs/msg/CompressedImage", "sensor_msgs/CompressedImage",
    "foxglove.RawImage", "foxglove.CompressedImage", "foxglove_msgs/msg/RawImage", "foxglove_msgs/msg/CompressedImage",
})
BYTES_PER_PIXEL = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "mono16": 2, "bayer_rggb8": 1,
                   "bayer_bggr8": 1, "bayer_gbrg8": 1, "bayer_grbg8": 1, "yuv422": 2, "uyvy": 2, "yuyv": 2,
                   "yuv422_yuy2": 2}
RAW_ENCODINGS = tuple(BYTES_PER_PIXEL)
COMPRESSED_FORMATS = ("jpeg", "jpg", "png")


class RobotLogOptions(BaseModel):
    """`capture.source_options.robot_log`: which topics of a log to read, and which clock stamps frames."""

    model_config = ConfigDict(extra="forbid")
    topics: list[str] = Field(default_factory=list, description="image topics to read (empty: every image topic)")
    clock: Literal["header", "log"] = Field(
        "header", description="header: the message's header stamp (log time where it is 0); log: the recorder's log time"
    )


class UnsupportedEncoding(ValueError):
    """An image message in a pixel encoding or compressed format this reader does not convert."""


# -- recognising a log ---------------------------------------------------------------------------------


def split_topic(spec: str) -> tuple[str, Optional[str]]:
    """`PATH#TOPIC` -> (PATH, TOPIC); a spec that exists as a path, or has no '#', is (spec, None)."""
    if TOPIC_SEP not in spec or os.path.exists(spec):
        return spec, None
    path, _, topic = spec.rpartition(TOPIC_SEP)
    return path, topic or None


def log_format(path: str) -> Optional[str]:
    """"mcap", "rosbag2" (a folder with metadata.yaml or .mcap / .db3 files, or a .db3) or "ros1" for a robot
    log, else None.

    Existing files are recognised by their first bytes, missing ones by suffix (so that opening says
    "does not exist" rather than another kind's error)."""
    p = Path(path)
    if p.is_dir():
        if (p / "metadata.yaml").is_file() or any(p.glob("*.mcap")) or any(p.glob("*.db3")):
            return "rosbag2"
        return None
    if p.is_file():
        try:
            with open(p, "rb") as f:
                head = f.read(16)
        except OSError:
            head = b""
        if head.startswith(MCAP_MAGIC):
            return "mcap"
        if head.startswith(ROSBAG1_MAGIC):
            return "ros1"
        if head.startswith(SQLITE_MAGIC) and p.suffix.lower() == ".db3":
            return "rosbag2"
    suffix = p.suffix.lower()
    return {".mcap": "mcap", ".bag": "ros1", ".db3": "rosbag2"}.get(suffix) if suffix in LOG_SUFFIXES else None


def is_robot_log(spec: str) -> bool:
    """A robot log, or `LOG#TOPIC`: the registry's recognition for this kind."""
    return log_format(split_topic(spec)[0]) is not None


# -- one log, through either library ---------------------------------------------------------------------


class _Message:
    """One message of a topic: its log time (ns) and its bytes, decoded on demand (`body`), so that a message
    that does not decode is one skipped message while damage to the file ends the pass."""

    __slots__ = ("log_time_ns", "_raw", "_decode", "_body")

    def __init__(self, log_time_ns: int, raw: Any, decode: Callable[[Any], Any]) -> None:
        self.log_time_ns, self._raw, self._decode, self._body = log_time_ns, raw, decode, None

    def body(self) -> Any:
        if self._body is None:
            self._body = self._decode(self._raw)
        return self._body


class _LogFile:
    """The library-specific part: which image topics a log holds (with message counts) and their messages.

    A log is one or more parts, each read by one library: MCAP files (a .mcap, or the files of a rosbag2
    folder in mcap storage) by `mcap`, whose stream reader also reads a file cut short; sqlite3 rosbag2
    folders, .db3 files and ROS 1 bags by `rosbags`. `messages(topic)` yields `_Message`s in log-time
    order per part and raises whatever the library raises at damage."""

    def __init__(self, path: str, fmt: str) -> None:
        self.path, self.fmt = path, fmt
        self.parts = _log_parts(path, fmt)

    def image_topics(self) -> dict[str, Optional[int]]:
        topics: dict[str, Optional[int]] = {}
        for backend, part in self.parts:
            found = _mcap_image_topics(part) if backend == "mcap" else _rosbags_image_topics(part)
            for topic, count in found.items():
                before = topics.get(topic, 0)
                topics[topic] = None if before is None or count is None else before + count
        return topics

    def messages(self, topic: str) -> Iterator[_Message]:
        for backend, part in self.parts:
            yield from (_mcap_messages(part, topic) if backend == "mcap" else _rosbags_messages(part, topic))


def _log_parts(path: str, fmt: str) -> list[tuple[str, str]]:
    """(library, path) of each part of a log, in recording order. A rosbag2 folder's metadata.yaml names its
    storage and files; a folder without one (the recorder writes it last: a robot that lost power leaves
    none) is read from the .mcap or .db3 files it holds."""
    if fmt == "mcap":
        return [("mcap", path)]
    if fmt == "ros1" or os.path.isfile(path):
        return [("rosbags", path)]
    folder = Path(path)
    meta = folder / "metadata.yaml"
    if meta.is_file():
        import yaml

        try:
            info = (yaml.safe_load(meta.read_text()) or {}).get("rosbag2_bagfile_information", {})
        except (OSError, yaml.YAMLError, AttributeError):
            info = {}
        if info.get("storage_identifier") == "mcap":
            files = [str(folder / name) for name in info.get("relative_file_paths", [])]
            return [("mcap", f) for f in files if os.path.isfile(f)] or [("mcap", str(f)) for f in sorted(folder.glob("*.mcap"))]
        return [("rosbags", path)]
    mcaps, dbs = sorted(folder.glob("*.mcap")), sorted(folder.glob("*.db3"))
    return [("mcap", str(f)) for f in mcaps] + [("rosbags", str(f)) for f in dbs]


def _mcap_image_topics(path: str) -> dict[str, Optional[int]]:
    from mcap.reader import make_reader

    with open(path, "rb") as f:
        if f.read(len(MCAP_MAGIC)) != MCAP_MAGIC:
            raise ValueError(f"'{path}' does not start with MCAP's magic bytes")
        f.seek(0)
        try:
            summary = make_reader(f).get_summary()
        except Exception:  # no footer (cut short): scan the records that are there
            summary = None
        if summary is not None and summary.channels:
            counts = summary.statistics.channel_message_counts if summary.statistics else {}
            topics: dict[str, Optional[int]] = {}
            for cid, channel in summary.channels.items():
                schema = summary.schemas.get(channel.schema_id)
                if schema is not None and schema.name in IMAGE_TYPES:
                    topics[channel.topic] = counts.get(cid) if counts else None
            return topics
        return _mcap_scan_topics(f)


def _mcap_scan_topics(f: Any) -> dict[str, Optional[int]]:
    """Image topics of an MCAP without a usable summary (a damaged or unfinished file): its channel records."""
    from mcap.records import Channel, Schema
    from mcap.stream_reader import StreamReader

    f.seek(0)
    schemas: dict[int, str] = {}
    topics: dict[str, Optional[int]] = {}
    try:
        for record in StreamReader(f, skip_magic=False).records:
            if isinstance(record, Schema):
                schemas[record.id] = record.name
            elif isinstance(record, Channel) and schemas.get(record.schema_id) in IMAGE_TYPES:
                topics[record.topic] = None
    except Exception:  # the damage: the channels announced before it are what there is
        pass
    return topics


def _mcap_decoders() -> list:
    from mcap_ros2.decoder import DecoderFactory as Ros2Decoders

    return [Ros2Decoders(), _ProtobufDecoders(), _JsonDecoders()]


class _ProtobufDecoders:
    """MCAP `protobuf` schemas (a FileDescriptorSet, as the Foxglove SDK writes) decoded by protobuf's own
    dynamic message classes (a descriptor pool and `message_factory`); protobuf comes with onnx already."""

    def __init__(self) -> None:
        self._decoders: dict[int, Callable[[bytes], Any]] = {}

    def decoder_for(self, message_encoding: str, schema: Any) -> Optional[Callable[[bytes], Any]]:
        if message_encoding != "protobuf" or schema is None or schema.encoding != "protobuf":
            return None
        if schema.id not in self._decoders:
            from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

            pool = descriptor_pool.DescriptorPool()
            files = descriptor_pb2.FileDescriptorSet.FromString(schema.data)
            for proto in files.file:
                pool.Add(proto)
            cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(schema.name))
            self._decoders[schema.id] = cls.FromString
        return self._decoders[schema.id]


class _JsonDecoders:
    """MCAP `json` messages (Foxglove's JSON schemas: `data` is base64): a namespace with the same fields."""

    def decoder_for(self, message_encoding: str, schema: Any) -> Optional[Callable[[bytes], Any]]:
        if message_encoding != "json":
            return None
        return _json_message


def _json_message(data: bytes) -> Any:
    body = json.loads(data)
    if isinstance(body.get("data"), str):
        body["data"] = base64.b64decode(body["data"])
    if isinstance(body.get("timestamp"), dict):
        stamp = body["timestamp"]
        body["timestamp"] = SimpleNamespace(sec=stamp.get("sec", 0), nanosec=stamp.get("nsec", 0))
    return SimpleNamespace(**body)


def _mcap_messages(path: str, topic: str) -> Iterator[_Message]:
    from mcap.reader import NonSeekingReader, make_reader

    factories = _mcap_decoders()
    decoders: dict[int, Callable[[bytes], Any]] = {}
    with open(path, "rb") as f:
        reader = make_reader(f)
        try:
            summary = reader.get_summary()
        except Exception:
            summary = None
        if summary is None or not summary.chunk_indexes:
            # cut short (no footer), never finished, or unchunked: read the records in file order (mcap's own
            # fallback for these sorts every message of the topic in memory first)
            f.seek(0)
            records = NonSeekingReader(f).iter_messages(topics=[topic], log_time_order=False)
        else:
            records = reader.iter_messages(topics=[topic], log_time_order=True)
        for schema, channel, message in records:
            decode = decoders.get(channel.id)
            if decode is None:
                decode = decoders[channel.id] = _mcap_decoder(factories, channel.message_encoding, schema)
            yield _Message(message.log_time, message.data, decode)


def _mcap_decoder(factories: list, message_encoding: str, schema: Any) -> Callable[[bytes], Any]:
    for factory in factories:
        decode = factory.decoder_for(message_encoding, schema)
        if decode is not None:
            return decode
    what = f"message encoding {message_encoding!r} of {schema.name if schema is not None else 'no schema'}"

    def unsupported(data: bytes) -> Any:
        raise UnsupportedEncoding(what)

    return unsupported


def _rosbags_image_topics(path: str) -> dict[str, Optional[int]]:
    from rosbags.highlevel import AnyReader

    with AnyReader([Path(path)]) as reader:
        topics: dict[str, Optional[int]] = {}
        for conn in reader.connections:
            if conn.msgtype in IMAGE_TYPES:
                topics[conn.topic] = (topics.get(conn.topic) or 0) + conn.msgcount
        return topics


def _rosbags_messages(path: str, topic: str) -> Iterator[_Message]:
    from rosbags.highlevel import AnyReader

    with AnyReader([Path(path)]) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        for conn, timestamp, raw in reader.messages(connections=conns):
            yield _Message(timestamp, raw, lambda data, msgtype=conn.msgtype: reader.deserialize(data, msgtype))


# -- pixels and time ---------------------------------------------------------------------------------------


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
    unpadded = SimpleNamespace(encoding=encoding, height=height, width=width, step=row, data=data,
                               is_bigendian=int(getattr(msg, "is_bigendian", 0) or 0))
    return np.ascontiguousarray(image_to_cvimage(unpadded, "rgb8"))  # OpenCV's conversions, 16 bit scaled to 8


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


def _supported(msg: Any) -> bool:
    """Would `message_to_rgb` try this message's encoding (without converting its pixels)?"""
    if hasattr(msg, "format"):
        fmt = str(msg.format).lower()
        return "compresseddepth" not in fmt and any(name in fmt for name in COMPRESSED_FORMATS)
    return str(getattr(msg, "encoding", "")) in RAW_ENCODINGS


# -- the kind: expansion and the source --------------------------------------------------------------------


def log_camera_specs(spec: str, options: Optional[RobotLogOptions] = None) -> list[str]:
    """One `LOG#TOPIC` spec per image topic of the log (those in `options.topics` when given), sorted by topic;
    a spec that already names a topic is itself. Expanding every topic leaves out, with one warning
    naming topic and encoding, a topic none of whose first PROBE_MESSAGES messages is in an encoding this
    reads (a 32FC1 or 16UC1 depth camera); topics the user named are kept (reading them says what is
    wrong). SourceError when the log has no image topic (in a readable encoding) or lacks a named one."""
    path, topic = split_topic(spec)
    if topic is not None:
        return [spec]
    fmt = log_format(path)
    if not os.path.exists(path):
        raise SourceError(f"robot log '{path}' does not exist")
    if fmt is None:
        return [spec]  # opening it says what is wrong
    try:
        topics = _LogFile(path, fmt).image_topics()
    except Exception as exc:
        raise _unreadable(path, fmt, exc) from None
    chosen = options is not None and bool(options.topics)
    wanted = list(options.topics) if chosen else sorted(topics)
    missing = [t for t in wanted if t not in topics]
    if missing:
        raise SourceError(f"robot log '{path}' has no image topic {', '.join(missing)} (it has: "
                          f"{', '.join(sorted(topics)) or 'none'})")
    if not wanted:
        raise SourceError(f"robot log '{path}' holds no image topic ({', '.join(sorted(IMAGE_TYPES))})")
    if not chosen:  # every image topic: leave out those in no encoding this reads (a depth camera's 32FC1)
        unreadable = {t: enc for t in wanted if (enc := _unreadable_encoding(path, fmt, t)) is not None}
        if len(unreadable) == len(wanted):
            raise SourceError(f"robot log '{path}' holds no image topic in an encoding this reads ("
                              f"{', '.join(f'{t}: {e}' for t, e in unreadable.items())}; reads "
                              f"{', '.join(RAW_ENCODINGS)}, compressed JPEG/PNG)")
        for topic, encoding in unreadable.items():
            if (os.path.abspath(path), topic) not in _LEFT_OUT:
                _LEFT_OUT.add((os.path.abspath(path), topic))
                log.warning("robot log '%s' topic %s: left out, its images are %s (not one of %s, or compressed "
                            "JPEG/PNG)", path, topic, encoding, ", ".join(RAW_ENCODINGS))
        wanted = [t for t in wanted if t not in unreadable]
    return [f"{path}{TOPIC_SEP}{t}" for t in wanted]


PROBE_MESSAGES = 20  # messages of a topic looked at before it is left out of an expanded log
_LEFT_OUT: set[tuple[str, str]] = set()  # (log, topic) already warned about in this process: one warning each


def _encoding_of(msg: Any) -> str:
    return str(msg.format if hasattr(msg, "format") else getattr(msg, "encoding", "")) or "(empty encoding)"


def _unreadable_encoding(path: str, fmt: str, topic: str) -> Optional[str]:
    """The encoding of `topic`'s images when none of its first PROBE_MESSAGES messages is in one this reads
    (`_supported`), else None. A topic with no message, or damage before one is seen, is kept: opening
    it says what is wrong."""
    seen: list[str] = []
    messages = _LogFile(path, fmt).messages(topic)
    try:
        for item in messages:
            body = item.body()
            if _supported(body):
                return None
            seen.append(_encoding_of(body))
            if len(seen) >= PROBE_MESSAGES:
                break
    except Exception:
        return None
    finally:
        close = getattr(messages, "close", None)
        if close is not None:
            close()
    return ", ".join(sorted(set(seen))) if seen else None


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def _unreadable(path: str, fmt: str, exc: BaseException) -> SourceError:
    """The one-line error for a log whose index or header cannot be read (damaged, cut short, or not a log)."""
    hint = ""
    if fmt == "ros1":
        hint = "; a ROS 1 bag is read through the index at its end, which `rosbag reindex` rebuilds"
    elif "malformed" in str(exc):
        hint = "; SQLite does not open a database file cut short"
    return SourceError(f"robot log '{path}' cannot be read: {_reason(exc)}{hint}")


class RobotLogSource(FrameSource):
    """One image topic of a robot log (`LOG#TOPIC`): finite unless `loop`; `media_time_s` is the log's clock.

    `frame_count` is the topic's message count where the log's index says it. `skipped` counts messages
    not delivered (unsupported encoding, undecodable bytes), `errors` the damage that ended a pass early."""

    def __init__(self, spec: str, options: Optional[RobotLogOptions] = None, loop: bool = False) -> None:
        path, topic = split_topic(spec)
        if topic is None:
            raise SourceError(f"robot log '{path}': name one image topic as '{path}{TOPIC_SEP}TOPIC'")
        super().__init__(f"robot log '{path}' topic {topic}")
        self.path, self.topic, self.loop = path, topic, loop
        self.options = options if options is not None else RobotLogOptions()
        self._fmt = log_format(path)
        self._messages: Optional[Iterator[_Message]] = None
        self._count: Optional[int] = None
        self._start = 0  # deliverable messages to skip at the first connect
        self._position = 0  # deliverable messages consumed in this pass: where a reconnect resumes
        self._delivered = 0
        self._media_time: Optional[float] = None
        self._warned: set[str] = set()

    @property
    def finite(self) -> bool:
        return not self.loop

    @property
    def media_time_s(self) -> Optional[float]:
        return self._media_time

    @property
    def frame_count(self) -> Optional[int]:
        return self._count

    def start_at(self, frame: int) -> None:
        self._start = max(0, int(frame))

    def connect(self) -> None:
        self.disconnect()
        if not os.path.exists(self.path):
            raise SourceError(f"{self.name}: '{self.path}' does not exist")
        if self._fmt is None:
            raise SourceError(f"{self.name}: '{self.path}' is not an MCAP file, rosbag2 folder or ROS 1 bag")
        logfile = _LogFile(self.path, self._fmt)
        try:
            topics = logfile.image_topics()
        except Exception as exc:
            raise _unreadable(self.path, self._fmt, exc) from None
        if self.topic not in topics:
            raise SourceError(f"{self.name}: no such image topic (the log has: {', '.join(sorted(topics)) or 'none'})")
        self._count = topics[self.topic]
        self._messages = logfile.messages(self.topic)
        skip = self._position or self._start
        self._position = 0
        while self._position < skip:
            item = self._next_message()
            if item is None:
                break
            try:
                deliverable = _supported(item.body())
            except Exception:  # does not decode: it was skipped, not delivered, the first time too
                deliverable = False
            self._position += deliverable
        self._start = 0

    def read(self) -> np.ndarray:
        if self._messages is None:
            raise SourceError(f"{self.name} is not connected")
        while True:
            item = self._next_message()
            if item is None:
                if self.loop and self._delivered:
                    self._position = 0
                    self.connect()
                    continue
                raise SourceExhausted(f"{self.name} has no more frames")
            try:
                body = item.body()
                rgb = message_to_rgb(body)
            except UnsupportedEncoding as exc:
                self._skip_unsupported(str(exc))
                continue
            except Exception as exc:  # bytes that do not hold the image they declare
                self.skipped += 1
                log.warning("%s: skipped a damaged message (%s; %d so far)", self.name, _reason(exc), self.skipped)
                continue
            self._position += 1
            self._delivered += 1
            stamp = 0 if self.options.clock == "log" else stamp_ns(body)
            self._media_time = (stamp or item.log_time_ns) / 1e9
            return rgb

    def _next_message(self) -> Optional[_Message]:
        """The next message of the topic, or None at the end or at damage (counted, named, logged once)."""
        assert self._messages is not None
        try:
            return next(self._messages)
        except StopIteration:
            return None
        except Exception as exc:
            self.errors += 1
            self._messages = iter(())
            log.warning("robot log '%s' is damaged or cut short after %d frames of %s: %s (error %d)",
                        self.path, self._position, self.topic, _reason(exc), self.errors)
            return None

    def _skip_unsupported(self, encoding: str) -> None:
        self.skipped += 1
        if encoding not in self._warned:
            self._warned.add(encoding)
            log.warning("%s: skipping its %s images (not one of %s, or compressed %s); counted in skipped",
                        self.name, encoding, ", ".join(RAW_ENCODINGS), "JPEG/PNG")

    def disconnect(self) -> None:
        messages, self._messages = self._messages, None
        close = getattr(messages, "close", None)
        if close is not None:
            close()
