"""One writer per directory: the run-directory lock (`run.lock`) and the export-directory lock (`publish.lock`).

Two `run`s, or a `run` and a `train`, on one run directory would mix their checkpoint lineages
and both publish "version N"; two publishers in one export directory would claim the same
version numbers. So the commands that own a directory hold an exclusive `fcntl.flock` on a lock
file inside it for as long as they run, and a second one is refused with one line naming the
holder (`DirectoryBusy`: pid, command, start time).

- The lock belongs to the open file, so the kernel drops it when its process dies, however it
  dies: a lock left by a `kill -9`'d holder is simply free, and the next command takes it over
  (logging whose it was). The lock file itself is never deleted or replaced (a new inode would
  be a second, independent lock).
- `byol-agent run` holds the run directory for its whole pipeline: its children (the trainer,
  restarted ones too) inherit the locked open file (`inheritance()` → `Popen(pass_fds=..., env=...)`)
  and, finding it in `BYOL_AGENT_LOCKS`, hold the very same lock instead of being refused. A child
  never unlocks it (that would unlock its parent too); closing its descriptor is enough.
- `byol-agent train --nproc N` holds the locks in the launcher while torchrun runs the ranks, but
  torchrun closes every inherited descriptor. So the launcher names itself in
  `BYOL_AGENT_LOCK_HOLDERS` (`holder_env()`), and a process refused a lock whose recorded holder is
  a pid listed there and one of its own ancestors (Linux /proc; elsewhere only its parent counts)
  holds it through that ancestor: it runs, and it never releases what it does not own.
- Who takes which: `run`, `train` and `replay` own a run directory's checkpoint lineage (`run.lock`;
  `train`/`replay` also `publish.lock` in RUN_DIR/exports when they export in-process); `export` holds
  `publish.lock` in its `--out` (a `train` plus an `export --watch` into its own directory is the
  documented manual pipeline, so the exporter does not take `run.lock`). `eval --run-dir` (one
  appended event), `report` (its own RUN_DIR/report) and the status files of capture and runtime
  do not lock: they are meant to run beside a live run.
- Advisory only (readers never take it), Linux/macOS (`fcntl`); where `fcntl` does not exist the
  lock is not taken (logged once). Like any flock, it does not coordinate hosts sharing an NFS mount.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Optional, Union

from agent.core.errors import ByolAgentError, StorageError

RUN_LOCK_NAME = "run.lock"
PUBLISH_LOCK_NAME = "publish.lock"
LOCKS_ENV = "BYOL_AGENT_LOCKS"  # "FD:DEV:INO,..." locked open files a child inherited from its parent
HOLDERS_ENV = "BYOL_AGENT_LOCK_HOLDERS"  # "PID,..." ancestors that hold their locks for their descendants
MAX_ANCESTORS = 64
log = logging.getLogger(__name__)

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


class DirectoryBusy(ByolAgentError):
    """Another live process holds the directory's lock (the message names its pid and command)."""


class DirLock:
    """An exclusive lock on `directory/lock_name`, held until `release()` (or the process ends).

    Use as a context manager; `lock_directory` takes it. `inherited` is True when the lock was
    handed down by the parent process (`byol-agent run`) rather than taken here.
    """

    def __init__(self, path: Path, fd: Optional[int], inherited: bool) -> None:
        self.path = path
        self._fd = fd
        self.inherited = inherited  # handed down by the parent, or held by an ancestor (`holder_env`)

    def inheritance(self) -> tuple[tuple[int, ...], dict[str, str]]:
        """(pass_fds, env) for `subprocess.Popen`, so that a child holds this same lock (see module doc)."""
        if self._fd is None:
            return (), {}
        st = os.fstat(self._fd)
        entries = [e for e in os.environ.get(LOCKS_ENV, "").split(",") if e]
        entries.append(f"{self._fd}:{st.st_dev}:{st.st_ino}")
        return (self._fd,), {LOCKS_ENV: ",".join(entries)}

    def release(self) -> None:
        """Close the lock file: frees the lock unless a child that inherited it still runs."""
        fd, self._fd = self._fd, None
        if fd is not None and not self.inherited:
            try:
                os.ftruncate(fd, 0)  # released in good order: a record left behind means the holder was killed
            except OSError:
                pass
            os.close(fd)

    def __enter__(self) -> "DirLock":
        return self

    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self.release()


def lock_directory(
    directory: Union[str, Path], command: str, *, lock_name: str = RUN_LOCK_NAME, what: str = "run directory"
) -> DirLock:
    """Take the exclusive lock on `directory/lock_name` (creating the directory) for `command`.

    Raises DirectoryBusy (one line: holder's pid, command, start time) when a live process holds
    it, StorageError when the directory or lock file cannot be created. The holder's pid, command
    and start time are written into the lock file for that message.
    """
    directory = Path(directory)
    path = directory / lock_name
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StorageError(f"cannot create the lock file {path}: {exc.strerror or exc}") from None
    if fcntl is None:
        os.close(fd)
        log.warning("no fcntl on this platform: %s %s is not locked against a second writer", what, directory)
        return DirLock(path, None, inherited=False)
    inherited = _inherited_fd(fd)
    if inherited is not None:
        try:
            fcntl.flock(inherited, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the parent's open file: already locked for us
        except OSError:
            pass  # not the lock after all: contend for it like anyone else
        else:
            os.close(fd)
            return DirLock(path, inherited, inherited=True)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: held by a live process
        holder = _read_holder(fd)
        os.close(fd)
        if _held_by_ancestor(holder):
            return DirLock(path, None, inherited=True)
        raise DirectoryBusy(
            f"{what} {directory} is in use by {_describe(holder)}; stop it first or use another directory"
        ) from None
    previous = _read_holder(fd, tries=1)
    if previous.get("pid") not in (None, os.getpid()):
        log.warning("took over %s from %s, which ended without releasing it", path, _describe(previous))
    _write_holder(fd, command)
    return DirLock(path, fd, inherited=False)


def holder_env() -> dict[str, str]:
    """Environment for descendants that cannot inherit lock descriptors (torchrun's ranks): this process
    holds its locks for them (see the module docstring)."""
    holders = [e for e in os.environ.get(HOLDERS_ENV, "").split(",") if e]
    return {HOLDERS_ENV: ",".join([*holders, str(os.getpid())])}


def _held_by_ancestor(holder: dict[str, Any]) -> bool:
    """The lock's recorded holder is an ancestor of ours that said it holds its locks for its descendants."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or str(pid) not in os.environ.get(HOLDERS_ENV, "").split(","):
        return False
    return pid in _ancestors()


def _ancestors() -> list[int]:
    """Our parent, its parent, ... (from /proc on Linux; only the parent where there is no /proc)."""
    found = [os.getppid()]
    while len(found) < MAX_ANCESTORS and found[-1] > 1:
        try:
            stat = Path(f"/proc/{found[-1]}/stat").read_text()
            found.append(int(stat.rsplit(")", 1)[1].split()[1]))  # "pid (comm) state ppid ..."
        except (OSError, ValueError, IndexError):
            break
    return found


def _inherited_fd(fd: int) -> Optional[int]:
    """The descriptor our parent passed down for this very lock file (same device and inode), if any."""
    st = os.fstat(fd)
    for entry in os.environ.get(LOCKS_ENV, "").split(","):
        try:
            number, dev, ino = (int(part) for part in entry.split(":"))
            theirs = os.fstat(number)
        except (ValueError, OSError):
            continue
        if (dev, ino) == (st.st_dev, st.st_ino) == (theirs.st_dev, theirs.st_ino):
            return number
    return None


def _write_holder(fd: int, command: str) -> None:
    holder = {"pid": os.getpid(), "command": command, "started": time.time(), "argv": sys.argv}
    data = (json.dumps(holder) + "\n").encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError as exc:  # the lock holds without it; only the refusal message is poorer
        log.warning("could not record the lock holder in the lock file: %s", exc.strerror or exc)


def _read_holder(fd: int, tries: int = 10) -> dict[str, Any]:
    """The holder record; retried briefly, since a new holder truncates before it writes."""
    for attempt in range(tries):
        try:
            data = os.pread(fd, 65536, 0)
            holder = json.loads(data)
            if isinstance(holder, dict):
                return holder
        except (OSError, ValueError):
            pass
        if attempt + 1 < tries:
            time.sleep(0.05)
    return {}


def _describe(holder: dict[str, Any]) -> str:
    pid, command, started = holder.get("pid"), holder.get("command"), holder.get("started")
    if not isinstance(pid, int):
        return "another process (pid not recorded)"
    since = ""
    if isinstance(started, (int, float)):
        since = ", since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
    name = f"byol-agent {command}" if isinstance(command, str) and command else "a process"
    return f"{name} (pid {pid}{since})"
