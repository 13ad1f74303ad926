"""Reading a robot log through a library: which image topics it holds and their messages, in log-time order.

A log is one or more parts (an MCAP file, the files of a rosbag2 folder, a .db3, a ROS 1 bag); `LogFile`
reads each part through `mcap` or `rosbags` and yields `LogMessage`s decoded on demand. `log_format`
recognises a log by its first bytes (by suffix when missing). The source on top is agent/robot/robot_logs.py.

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
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Optional

from agent.robot.robot_log_images import IMAGE_TYPES, UnsupportedEncoding

MCAP_MAGIC = b"\x89MCAP0\r\n"
ROSBAG1_MAGIC = b"#ROSBAG V2.0\n"
SQLITE_MAGIC = b"SQLite format 3\x00"
LOG_SUFFIXES = (".mcap", ".bag", ".db3")


def log_format(path: str) -> Optional[str]:
    """ "mcap", "rosbag2" (a folder with metadata.yaml or .mcap / .db3 files, or a .db3) or "ros1" for a robot
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


class LogMessage:
    """One message of a topic: its log time (ns) and its bytes, decoded on demand (`body`), so that a message
    that does not decode is one skipped message while damage to the file ends the pass."""

    __slots__ = ("log_time_ns", "_raw", "_decode", "_body")

    def __init__(self, log_time_ns: int, raw: Any, decode: Callable[[Any], Any]) -> None:
        self.log_time_ns, self._raw, self._decode, self._body = log_time_ns, raw, decode, None

    def body(self) -> Any:
        if self._body is None:
            self._body = self._decode(self._raw)
        return self._body


class LogFile:
    """The library-specific part: which image topics a log holds (with message counts) and their messages.

    A log is one or more parts, each read by one library: MCAP files (a .mcap, or the files of a rosbag2
    folder in mcap storage) by `mcap`, whose stream reader also reads a file cut short; sqlite3 rosbag2
    folders, .db3 files and ROS 1 bags by `rosbags`. `messages(topic)` yields `LogMessage`s in log-time
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

    def messages(self, topic: str) -> Iterator[LogMessage]:
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
            return [("mcap", f) for f in files if os.path.isfile(f)] or [
                ("mcap", str(f)) for f in sorted(folder.glob("*.mcap"))
            ]
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


def _mcap_messages(path: str, topic: str) -> Iterator[LogMessage]:
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
            yield LogMessage(message.log_time, message.data, decode)


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


def _rosbags_messages(path: str, topic: str) -> Iterator[LogMessage]:
    from rosbags.highlevel import AnyReader

    with AnyReader([Path(path)]) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        for conn, timestamp, raw in reader.messages(connections=conns):

            def decode(data: Any, msgtype: str = conn.msgtype) -> Any:
                return reader.deserialize(data, msgtype)

            yield LogMessage(timestamp, raw, decode)
