"""A disk that fills up on demand, for fault tests: a real tmpfs where this user may mount one, else a
file-size limit (RLIMIT_FSIZE = 0 makes every write that grows a file fail with EFBIG) set on a
process tree from outside with prlimit(2)."""

from __future__ import annotations

import errno
import os
import resource
import shutil
import subprocess
from pathlib import Path
from typing import Optional


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(entry.name))
    return found


class FillableDisk:
    """`path` lives on a disk `fill()` makes full and `free()` empties again.

    With a tmpfs the fault is the real one (ENOSPC for every process); otherwise `fill(pid)` sets
    RLIMIT_FSIZE to 0 on `pid` and its descendants (new children inherit it) and `free()` lifts it.
    """

    def __init__(self, root: Path, size_mb: int = 64) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        allowed = os.environ.get("BYOL_TEST_DISK", "tmpfs") == "tmpfs"  # BYOL_TEST_DISK=fsize forces the fallback
        self.tmpfs = allowed and os.geteuid() == 0 and shutil.which("mount") is not None and self._mount(size_mb)
        self.path = root / "disk"
        self.path.mkdir(exist_ok=True)
        self._limited: list[int] = []

    def _mount(self, size_mb: int) -> bool:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(self.root)], capture_output=True
        )
        return done.returncode == 0

    @property
    def kind(self) -> str:
        return "tmpfs (ENOSPC)" if self.tmpfs else "RLIMIT_FSIZE=0 (EFBIG)"

    def fill(self, pid: Optional[int] = None) -> None:
        if self.tmpfs:
            # Unbuffered: a buffered writer keeps the part of a chunk ENOSPC cut off and raises ENOSPC again
            # when the file is closed (seen whenever the free space was not a whole number of chunks).
            with open(self.root / "ballast", "wb", buffering=0) as f:
                chunk = bytes(1 << 20)
                try:
                    while True:
                        f.write(chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
            return
        assert pid is not None, "the file-size fallback needs the process tree to limit"
        stack, self._limited = [pid], []
        while stack:
            current = stack.pop()
            try:
                resource.prlimit(current, resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
                self._limited.append(current)
            except (ProcessLookupError, PermissionError):
                continue
            stack.extend(_children(current))

    def free(self, pid: Optional[int] = None) -> None:
        if self.tmpfs:
            (self.root / "ballast").unlink(missing_ok=True)
            return
        stack = [pid] if pid is not None else list(self._limited)
        while stack:
            current = stack.pop()
            try:
                resource.prlimit(current, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            except (ProcessLookupError, PermissionError):
                continue
            stack.extend(_children(current))

    def close(self) -> None:
        if self.tmpfs:
            subprocess.run(["umount", "-l", str(self.root)], capture_output=True)
