"""Robot logs as frame sources: MCAP files, rosbag2 folders (sqlite3 or mcap storage) and ROS 1 `.bag` files.

Reading: agent/robot/robot_log_readers.py (which library reads which kind of log, its parts, topics and
messages); agent/robot/robot_log_images.py (the message types and pixel encodings read, and the stamps). A message
in any other encoding is skipped and counted, with one warning per topic naming it.

Each image topic of a log is its own camera: `log_camera_specs("drive.mcap")` gives one spec per image
topic (`drive.mcap#/front/image_raw`, `drive.mcap#/rear/image_raw/compressed`), each read by one
`RobotLogSource`; a user may give `PATH#TOPIC` directly, or list topics in
`capture.source_options.robot_log.topics`. Non-image topics are ignored.

Clock: a frame's time is its header stamp (Foxglove: `timestamp`), else the log time when the stamp is
zero or `clock: log` (`media_time_s`, seconds since the epoch); capture puts it on the wire, so
`--pace realtime` follows it and the buffer pairs temporal positives by it. `start_at(n)` skips the
first n deliverable messages of the topic (a resumed replay).

Damage: a log cut short or damaged mid-way (a robot that lost power) gives the frames before the damage,
then ends with one counted error (`errors`) naming the file; a message that does not decode is skipped
and counted. Never a traceback: the libraries raise many types on bad bytes, so those calls catch
`Exception` and turn it into the count.
"""

from __future__ import annotations

import logging
import os
from typing import Iterator, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from agent.core.errors import SourceError
from agent.robot.robot_log_images import (
    IMAGE_TYPES,
    RAW_ENCODINGS,
    UnsupportedEncoding,
    encoding_of,
    is_supported,
    message_to_rgb,
    stamp_ns,
)
from agent.robot.robot_log_readers import LogFile, LogMessage, log_format
from agent.robot.source_base import RecordingSource, SourceExhausted

log = logging.getLogger(__name__)

TOPIC_SEP = "#"


class RobotLogOptions(BaseModel):
    """`capture.source_options.robot_log`: which topics of a log to read, and which clock stamps frames."""

    model_config = ConfigDict(extra="forbid")
    topics: list[str] = Field(default_factory=list, description="image topics to read (empty: every image topic)")
    clock: Literal["header", "log"] = Field(
        "header",
        description="header: the message's header stamp (log time where it is 0); log: the recorder's log time",
    )


# -- recognising a log ---------------------------------------------------------------------------------


def split_topic(spec: str) -> tuple[str, Optional[str]]:
    """`PATH#TOPIC` -> (PATH, TOPIC); a spec that exists as a path, or has no '#', is (spec, None)."""
    if TOPIC_SEP not in spec or os.path.exists(spec):
        return spec, None
    path, _, topic = spec.rpartition(TOPIC_SEP)
    return path, topic or None


def is_robot_log(spec: str) -> bool:
    """A robot log, or `LOG#TOPIC`: the registry's recognition for this kind."""
    return log_format(split_topic(spec)[0]) is not None


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
        topics = LogFile(path, fmt).image_topics()
    except Exception as exc:
        raise _unreadable(path, fmt, exc) from None
    named = list(options.topics) if options is not None else []
    chosen = bool(named)
    wanted = named if chosen else sorted(topics)
    missing = [t for t in wanted if t not in topics]
    if missing:
        raise SourceError(
            f"robot log '{path}' has no image topic {', '.join(missing)} (it has: "
            f"{', '.join(sorted(topics)) or 'none'})"
        )
    if not wanted:
        raise SourceError(f"robot log '{path}' holds no image topic ({', '.join(sorted(IMAGE_TYPES))})")
    if not chosen:  # every image topic: leave out those in no encoding this reads (a depth camera's 32FC1)
        unreadable = {t: enc for t in wanted if (enc := _unreadable_encoding(path, fmt, t)) is not None}
        if len(unreadable) == len(wanted):
            raise SourceError(
                f"robot log '{path}' holds no image topic in an encoding this reads ("
                f"{', '.join(f'{t}: {e}' for t, e in unreadable.items())}; reads "
                f"{', '.join(RAW_ENCODINGS)}, compressed JPEG/PNG)"
            )
        for topic, encoding in unreadable.items():
            if (os.path.abspath(path), topic) not in _LEFT_OUT:
                _LEFT_OUT.add((os.path.abspath(path), topic))
                log.warning(
                    "robot log '%s' topic %s: left out, its images are %s (not one of %s, or compressed JPEG/PNG)",
                    path,
                    topic,
                    encoding,
                    ", ".join(RAW_ENCODINGS),
                )
        wanted = [t for t in wanted if t not in unreadable]
    return [f"{path}{TOPIC_SEP}{t}" for t in wanted]


PROBE_MESSAGES = 20  # messages of a topic looked at before it is left out of an expanded log
_LEFT_OUT: set[tuple[str, str]] = set()  # (log, topic) already warned about in this process: one warning each


def _unreadable_encoding(path: str, fmt: str, topic: str) -> Optional[str]:
    """The encoding of `topic`'s images when none of its first PROBE_MESSAGES messages is in one this reads
    (`is_supported`), else None. A topic with no message, or damage before one is seen, is kept: opening
    it says what is wrong."""
    seen: list[str] = []
    messages = LogFile(path, fmt).messages(topic)
    try:
        for item in messages:
            body = item.body()
            if is_supported(body):
                return None
            seen.append(encoding_of(body))
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


class RobotLogSource(RecordingSource):
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
        self._messages: Optional[Iterator[LogMessage]] = None
        self._count: Optional[int] = None
        self._start = 0  # deliverable messages to skip at the first connect
        self._position = 0  # deliverable messages consumed in this pass: where a reconnect resumes
        self._delivered = 0
        self._warned: set[str] = set()

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
        logfile = LogFile(self.path, self._fmt)
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
                deliverable = is_supported(item.body())
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

    def _next_message(self) -> Optional[LogMessage]:
        """The next message of the topic, or None at the end or at damage (counted, named, logged once)."""
        assert self._messages is not None
        try:
            return next(self._messages)
        except StopIteration:
            return None
        except Exception as exc:
            self.errors += 1
            self._messages = iter(())
            log.warning(
                "robot log '%s' is damaged or cut short after %d frames of %s: %s (error %d)",
                self.path,
                self._position,
                self.topic,
                _reason(exc),
                self.errors,
            )
            return None

    def _skip_unsupported(self, encoding: str) -> None:
        self.skipped += 1
        if encoding not in self._warned:
            self._warned.add(encoding)
            log.warning(
                "%s: skipping its %s images (not one of %s, or compressed %s); counted in skipped",
                self.name,
                encoding,
                ", ".join(RAW_ENCODINGS),
                "JPEG/PNG",
            )

    def disconnect(self) -> None:
        messages, self._messages = self._messages, None
        close = getattr(messages, "close", None)
        if close is not None:
            close()
