"""Files that readers (another process, a crash-restart) never see half-written.

Temp file in the same directory → fsync → `os.replace` → fsync the directory. Kept free of heavy
imports: capture, trainer, exporter and runtime all write status and manifests through it.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import Any

TEMP_PREFIX = ".tmp-"


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
    tmp = path.with_name(f"{TEMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
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


def jsonable(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null rather than emitting invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def write_status(path: Path, data: dict[str, Any]) -> None:
    """A status snapshot for the `run` supervisor: atomic, not fsynced (rewritten every second)."""
    atomic_write_bytes(path, json.dumps(jsonable(data)).encode(), durable=False)
