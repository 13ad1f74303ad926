"""JSON-lines files (one JSON object per line): the one place that appends them and reads them back.

The run's append-only records are JSON lines: metrics.jsonl (trainer sinks, `eval` / `export` events),
capture.jsonl and runtime.jsonl (histories). Everything that writes or reads one goes through here,
so they share one error behaviour:

- Appending: each record is one `write` of one whole line to a file opened for appending (concurrent
  readers and other appenders see whole lines); non-finite floats are written as null (`jsonable`).
  When the file's last line lacks its newline (a write cut short by a crash or a full disk), the next
  record starts on a new line, so the torn line costs itself only. An OSError (disk full, folder
  gone, permissions) raises `StorageError` naming the file; the caller decides whether that is
  advisory (`agent.core.atomic.append_record`, a metrics sink) or reported (`append_event`).
- Reading: a line that is not a JSON object (the torn last line of a crash, a garbled one) is skipped
  and counted in `JsonlRows.bad_lines`, never raised; blank lines are ignored. A file that cannot be
  read at all raises `StorageError`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, TextIO, Union

from agent.core.errors import StorageError

PathLike = Union[str, Path]


def jsonable(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null rather than emitting invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def _storage_error(verb: str, path: Path, exc: OSError) -> StorageError:
    return StorageError(f"cannot {verb} {path}: {exc.strerror or exc}")


class JsonlAppender:
    """Appends records to one JSON-lines file kept open; each line flushed, so a kill -9 loses at most one.

    Raises StorageError (from the OSError) when the file cannot be opened or a line cannot be written.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        try:
            self._file: Optional[TextIO] = open(self.path, "a", encoding="utf-8")
            self._torn = _ends_torn(self.path)
        except OSError as exc:
            self.close()
            raise _storage_error("append to", self.path, exc) from exc

    def append(self, record: dict[str, Any]) -> None:
        """Write `record` as one line (after a newline ending a torn last line); StorageError when it cannot."""
        if self._file is None:
            raise ValueError(f"{self.path} appender is closed")
        line = ("\n" if self._torn else "") + json.dumps(jsonable(record)) + "\n"
        try:
            self._file.write(line)
            self._file.flush()
        except OSError as exc:
            raise _storage_error("append to", self.path, exc) from exc
        self._torn = False

    def close(self) -> None:
        """Close the file; never raises (a tail that cannot be flushed on a full disk is already lost)."""
        file, self._file = getattr(self, "_file", None), None
        if file is not None:
            try:
                file.close()
            except OSError:
                pass


def append_jsonl(path: PathLike, record: dict[str, Any]) -> None:
    """Append `record` as one line to `path` (created if missing); StorageError when it cannot be written."""
    appender = JsonlAppender(path)
    try:
        appender.append(record)
    finally:
        appender.close()


def _ends_torn(path: Path) -> bool:
    """Whether the file's last line lacks its newline (a write cut short); False for an empty file."""
    with open(path, "rb") as fh:
        if fh.seek(0, 2) == 0:
            return False
        fh.seek(-1, 2)
        return fh.read(1) != b"\n"


@dataclass(frozen=True)
class JsonlRows:
    """The JSON objects of a JSON-lines file in file order, and how many lines were not one."""

    rows: list[dict[str, Any]]
    bad_lines: int


def read_jsonl(path: PathLike) -> JsonlRows:
    """Read `path`, skipping and counting lines that are not a JSON object (a torn or garbled line).

    Undecodable bytes are replaced (the line then usually fails to parse and is counted). Raises
    StorageError when the file cannot be read (missing, permissions).
    """
    path = Path(path)
    rows: list[dict[str, Any]] = []
    bad = 0
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    bad += 1
                    continue
                if isinstance(row, dict):
                    rows.append(row)
                else:
                    bad += 1
    except OSError as exc:
        raise _storage_error("read", path, exc) from exc
    return JsonlRows(rows, bad)
