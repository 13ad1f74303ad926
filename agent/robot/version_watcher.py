"""The runtime's watcher: the background worker that finds, loads and announces each new encoder version.

Every `poll_interval_s` it reads `LATEST` in the export folder; a version not serving yet is loaded off
the serving path by the `VersionLoader` and handed to the owner's `install` (`HotEncoder`, which swaps
one reference), then announced to the policy's `on_swap`. A failed load is counted and logged once per
set of files (name, manifest, model and map stamps, pin) and retried only when they change. While
nothing serves yet, a LATEST that fails falls back to the newest earlier version that verifies.
It runs on the one background-thread lifecycle of the codebase, `agent.core.worker.Worker`; an
unexpected error in one poll is logged and the watcher goes on (serving keeps the old version).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from agent.core.errors import ModelFileError
from agent.core.worker import Worker
from agent.robot.version_loader import Loaded, VersionLoader, file_stamp
from export.manifest import LATEST_NAME, manifest_filename, model_filename, parse_version, read_latest
from export.map_files import map_filename

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SwapEvent:
    """Passed to `on_swap` each time a new version starts serving (old_version is None for the first)."""

    old_version: Optional[int]
    new_version: int
    step: int
    output_dim: int
    load_s: float
    manifest: dict[str, Any]
    compatible_with: Optional[int] = None  # the pinned version whose space embeddings are served in

    @classmethod
    def of(cls, loaded: Loaded, old_version: Optional[int], load_s: float, pin: Optional[int]) -> "SwapEvent":
        """The event of `loaded` starting to serve after `old_version` (None: the first), in `pin`'s space."""
        manifest = loaded.manifest
        return cls(old_version, manifest.version, manifest.step, manifest.output_dim, load_s, manifest.raw, pin)


class VersionWatcher(Worker):
    """Polls `export_dir` for new versions and installs them through its owner.

    `serving()`: the version serving now (None before the first); `pin()`: the pinned version (None:
    unpinned); `attach(loaded)`: `loaded` with its map into the pinned space (ModelFileError when there
    is none); `install(loaded, load_s)`: make it serve, giving the event to announce. `stop_event` is
    shared with the loader, so a load waiting for a session slot ends at close.
    """

    def __init__(
        self,
        export_dir: Path,
        loader: VersionLoader,
        *,
        poll_interval_s: float,
        stop_event: threading.Event,
        serving: Callable[[], Optional[Loaded]],
        pin: Callable[[], Optional[int]],
        attach: Callable[[Loaded], Loaded],
        install: Callable[[Loaded, float], SwapEvent],
        on_swap: Optional[Callable[[SwapEvent], None]] = None,
    ) -> None:
        super().__init__("hot-encoder-watcher", stop_event)
        self.export_dir, self._loader, self._poll_interval_s = export_dir, loader, poll_interval_s
        self._serving, self._pin, self._attach, self._install_into = serving, pin, attach, install
        self._on_swap = on_swap
        self._failed_signature: Optional[tuple] = None
        self.failed_loads = 0
        self.last_error: Optional[str] = None

    # Tracebacks are logged as text, never kept: a traceback keeps its frames alive, and a frame
    # holding an old session would keep it resident and block every later swap.

    def loop_once(self) -> Optional[bool]:
        if self.stop_event.wait(self._poll_interval_s):
            return False
        try:
            event = self.poll_once()
        except Exception as exc:  # never let the watcher die: serving goes on with the old version
            self.last_error = f"watcher error: {exc!r}"
            log.error(
                "hot encoder watcher error; still serving version %s\n%s", self._serving_str(), traceback.format_exc()
            )
            return True
        self.notify(event)
        return True

    def poll_once(self) -> Optional[SwapEvent]:
        """One look at LATEST: the event of the version it installed, or None (nothing new, or it failed)."""
        latest_path = self.export_dir / LATEST_NAME
        try:
            name = read_latest(self.export_dir)
        except ModelFileError as exc:
            return self._fall_back((LATEST_NAME, file_stamp(latest_path)), exc, None)
        current = self._serving()
        if name is None and current is None and self._has_manifests():  # LATEST lost, versions still there
            return self._fall_back((LATEST_NAME, None), ModelFileError(f"{latest_path} is missing"), None)
        if name is None or name == (current.name if current else None):
            return None
        version = parse_version(name)
        assert version is not None  # read_latest accepts only an encoder-NNNNNN.json name
        signature = (
            name,
            file_stamp(self.export_dir / name),
            file_stamp(self.export_dir / model_filename(version)),
            file_stamp(self.export_dir / map_filename(version)),
            self._pin(),
        )
        if signature == self._failed_signature:
            return None  # same broken files as last time: wait for them to change
        start = time.perf_counter()
        try:
            loaded = self._loader.load(name, current.manifest if current else None)
            if self.stop_event.is_set():
                return None
            return self._install(loaded, time.perf_counter() - start)
        except ModelFileError as exc:
            return self._fall_back(signature, exc, version)

    def notify(self, event: Optional[SwapEvent]) -> None:
        """Run the policy's callback outside any frame that holds a session."""
        if event is None or self._on_swap is None:
            return
        try:
            self._on_swap(event)
        except Exception as exc:  # the policy's callback must not stop future swaps
            self.last_error = f"on_swap callback failed: {exc!r}"
            log.error("on_swap callback failed for version %d\n%s", event.new_version, traceback.format_exc())

    def _install(self, loaded: Loaded, load_s: float) -> SwapEvent:
        event = self._install_into(loaded, load_s)
        self._failed_signature = None
        return event

    def _fall_back(self, signature: tuple, exc: ModelFileError, below: Optional[int]) -> Optional[SwapEvent]:
        """Record the failure; while nothing serves yet, swap in the newest version below `below` (None:
        any) that verifies. Tried once per set of failing files."""
        new = self._failed(signature, exc)
        if not new or self._serving() is not None:
            return None
        loaded = self._newest_good_before(below)
        if loaded is None or self.stop_event.is_set():
            return None
        return self._install(loaded, 0.0)

    def _has_manifests(self) -> bool:
        return any(parse_version(p.name) is not None for p in self.export_dir.glob("encoder-*.json"))

    def _newest_good_before(self, version: Optional[int]) -> Optional[Loaded]:
        """Nothing serves yet and LATEST failed: the newest earlier version that verifies, or None."""
        found = {parse_version(p.name) for p in self.export_dir.glob("encoder-*.json")}
        candidates = sorted((v for v in found if v is not None and (version is None or v < version)), reverse=True)
        for candidate in candidates:
            current = self._serving()
            try:
                loaded = self._attach(
                    self._loader.load(manifest_filename(candidate), current.manifest if current else None)
                )
            except ModelFileError as exc:
                log.warning("skipping version %d as well: %s", candidate, exc)
                continue
            log.warning(
                "LATEST names version %s, which does not verify; serving version %d, the newest that does",
                version,
                candidate,
            )
            return loaded
        return None

    def _failed(self, signature: tuple, exc: ModelFileError) -> bool:
        """Count and log a failure once per set of files; True when these files had not failed before."""
        if signature == self._failed_signature:
            return False
        self._failed_signature = signature
        self.failed_loads += 1
        self.last_error = str(exc)
        log.warning("not loading new encoder, still serving version %s: %s", self._serving_str(), exc)
        return True

    def _serving_str(self) -> str:
        current = self._serving()
        return str(current.manifest.version) if current else "none"
