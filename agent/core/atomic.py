"""Files that readers (another process, a crash-restart) never see half-written.

Temp file in the same directory → fsync → `os.replace` → fsync the directory. Kept free of heavy
imports: capture, trainer, exporter and runtime all write status and manifests through it.

Temp names are `.tmp-PID-...`: a process killed mid-write leaves one behind, and the next start
(`remove_stale_temps`) deletes those whose writer is no longer alive. Status files are advisory:
`write_status` warns and carries on when the disk is full instead of stopping its process.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from agent.core.backoff import worth_logging
from agent.core.errors import StorageError
from agent.core.jsonl import append_jsonl, jsonable

TEMP_PREFIX = ".tmp-"
_TEMP_PID = re.compile(r"^\.tmp-(\d+)-")
_UNOWNED_TEMP_S = 3600.0  # a temp name without a pid (older versions) is stale after this long
log = logging.getLogger(__name__)


def temp_name(final_name: str) -> str:
    """A private temp name for writing `final_name` in the same directory: `.tmp-PID-RANDOM-final_name`."""
    return f"{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{final_name}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete `.tmp-*` files in `directory` left by writers that died mid-write; returns what went.

    A temp whose name carries the pid of a live process (another writer at work, or ourselves) is
    kept; one without a pid only once it is an hour old. Missing directories and races are ignored.
    """
    removed: list[Path] = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    now = time.time()
    for path in entries:
        if not path.name.startswith(TEMP_PREFIX):
            continue
        match = _TEMP_PID.match(path.name)
        try:
            stale = (not _alive(int(match.group(1)))) if match else now - path.stat().st_mtime > _UNOWNED_TEMP_S
            if stale:
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    if removed:
        log.info("removed %d temp file(s) left by an interrupted writer in %s", len(removed), directory)
    return removed


def fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` durable (no-op where directories cannot be opened, e.g. Windows)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace `path` with `data` in one step; `durable=False` skips the fsyncs (status files)."""
    path = Path(path)
    tmp = path.with_name(temp_name(path.name))
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        fsync_dir(path.parent)


def write_status(path: Path, data: dict[str, Any]) -> bool:
    """A status snapshot for the `run` supervisor: atomic, not fsynced (rewritten every second).

    Advisory: an OSError (disk full, directory gone) is logged (the first, then every 100th in a
    row) and swallowed, so a full disk never stops the process writing it. Returns whether it was written.
    """
    payload = json.dumps(jsonable(data)).encode()
    return _advisory("status file", "written", path, lambda: atomic_write_bytes(path, payload, durable=False))


def append_record(path: Path, record: dict[str, Any]) -> bool:
    """Append `record` as one JSON line to an append-only history (capture.jsonl, runtime.jsonl).

    Written by `agent.core.jsonl.append_jsonl` (one whole line per write; a torn last line, from a
    crash, is ended first and skipped and counted by readers). Advisory like `write_status`: a failed
    write (StorageError) is logged (the first, then every 100th in a row) and swallowed.
    Returns whether the line was written.
    """
    return _advisory("history", "appended", path, lambda: append_jsonl(path, record))


_advisory_failures: dict[tuple[str, str], int] = {}  # (kind, path) -> failures in a row


def _advisory(kind: str, verb: str, path: Path, write: Callable[[], None]) -> bool:
    """Run `write`; an OSError (or StorageError) is counted per file, logged the first and every 100th
    time in a row, and swallowed (False); the first success after failures says so."""
    key = (kind, str(path))
    try:
        write()
    except (OSError, StorageError) as exc:
        failures = _advisory_failures.get(key, 0) + 1
        _advisory_failures[key] = failures
        if worth_logging(failures):
            reason = getattr(exc.__cause__ or exc, "strerror", None) or exc
            log.warning("%s %s not %s (%d in a row): %s; carrying on", kind, path, verb, failures, reason)
        return False
    if _advisory_failures.pop(key, 0):
        log.info("%s %s %s again", kind, path, verb)
    return True
