"""`HotEncoder`: the policy's ONNX encoder, swapped to each newly published version without a dropped call.

    with HotEncoder("runs/default/exports") as enc:
        z = enc.embed(frames_uint8)      # (N,H,W,3) or (H,W,3) RGB, any size → (N, D) float32

Pinned to a version (`compatible_with=P`, for a policy head fit on P's embeddings), every later
version is served mapped into P's space through the maps the exporter stored beside each version
(`export.fit_maps`), composed into one matrix when the version is loaded; serving adds one matmul and
a bias. A version whose chain down to P is broken (map missing, corrupt, past the pin) is refused
like a broken file; `repin(V)` moves the pin once the head has been refit on V.

A watcher (agent/robot/version_watcher.py, a `Worker`) polls `LATEST`. A new version is loaded entirely off the
serving path by a
`VersionLoader` (agent/robot/version_loader.py: hash check, session from the very file checked,
warm-up, same output dimension as the one serving, at most two sessions resident).
The swap replaces one reference to an immutable (session, manifest) pair; a call in flight holds
its own reference and finishes on the old session. A failed load is logged once, keeps the old
version serving, and is retried only when the files change. While nothing is serving yet (a
robot booting after a bad write), a LATEST that fails falls back to the newest earlier version
that verifies, each skipped one logged; LATEST keeps being watched. Torch-free:
numpy, OpenCV and onnxruntime only.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from agent.core.errors import ModelFileError
from agent.core.frames import as_frame_batch
from agent.robot.version_loader import Loaded, VersionLoader
from agent.robot.version_watcher import SwapEvent, VersionWatcher
from export.manifest import LATEST_NAME
from export.map_files import compose_to
from export.pins import check_pinnable, pin_path, write_pin
from export.sessions import resolve_providers

log = logging.getLogger(__name__)


def record_pin(export_dir: Path, version: int) -> None:
    """Write the pin marker of `version` (export.pins): retention keeps the maps into its space."""
    try:
        write_pin(export_dir, version)
    except OSError as exc:  # e.g. a read-only copy of the exports: serving works, retention is not told
        log.warning(
            "pin of version %d not recorded in %s (%s): retention may remove its maps",
            version,
            export_dir,
            exc.strerror or exc,
        )


class HotEncoder:
    """Serves `embed()` from the newest verified export in `export_dir`, hot-swapping as new ones appear."""

    def __init__(
        self,
        export_dir: Union[str, Path],
        *,
        poll_interval_s: float = 0.5,
        wait: bool = True,
        timeout_s: Optional[float] = None,
        on_swap: Optional[Callable[[SwapEvent], None]] = None,
        providers: str = "auto",
        threads: Optional[int] = None,
        compatible_with: Optional[int] = None,
        trt_fp16: bool = False,
        trt_cache: Union[str, Path, None] = None,
    ) -> None:
        """`providers`: "auto" | "cpu" | "cuda" | "tensorrt" (export.sessions.resolve_providers). With
        TensorRT, `trt_fp16` lets it pick fp16 kernels and `trt_cache` is where built engines are kept
        per model sha256 (None: EXPORT_DIR/trt-cache), so a restart reuses them instead of rebuilding."""
        self.export_dir = Path(export_dir)
        self._pin = compatible_with
        self._pin_lock = threading.Lock()  # held by the watcher from attaching a map to swapping, and by repin
        if compatible_with is not None:
            check_pinnable(self.export_dir, compatible_with)
            record_pin(self.export_dir, compatible_with)
        self._providers = resolve_providers(providers)
        self._current: Optional[Loaded] = None
        self._stop = threading.Event()
        self._loader = VersionLoader(
            self.export_dir,
            self._providers,
            threads,
            self._stop,
            trt_fp16=trt_fp16,
            trt_cache=Path(trt_cache) if trt_cache is not None else None,
        )
        self._first = threading.Event()
        self.swaps = 0
        self._watcher = VersionWatcher(
            self.export_dir,
            self._loader,
            poll_interval_s=poll_interval_s,
            stop_event=self._stop,
            serving=lambda: self._current,
            pin=lambda: self._pin,
            attach=self._attach,
            install=self._install,
            on_swap=on_swap,
        )
        self._watcher.notify(self._watcher.poll_once())
        if self._current is None and not wait:
            reason = self.last_error or f"nothing published yet ({self.export_dir / LATEST_NAME} is missing)"
            raise ModelFileError(f"no servable encoder in {self.export_dir}: {reason}")
        self._watcher.start()
        if self._current is None and not self._wait_first(timeout_s):
            self.close()
            reason = f" (last error: {self.last_error})" if self.last_error else ""
            raise ModelFileError(f"no encoder was published in {self.export_dir} within {timeout_s:.1f} s{reason}")

    def _wait_first(self, timeout_s: Optional[float]) -> bool:
        try:
            return self._first.wait(timeout_s)
        except BaseException:  # Ctrl-C while waiting: stop the watcher before unwinding
            self.close()
            raise

    # -- serving path -----------------------------------------------------------------------

    def embed(self, frames: np.ndarray) -> np.ndarray:
        """uint8 RGB frames (N,H,W,3) or (H,W,3), any size → (N, D) float32 embeddings."""
        return self.embed_with_version(frames)[0]

    def embed_with_version(self, frames: np.ndarray) -> tuple[np.ndarray, int]:
        """Like `embed`, plus the version that computed it (for logging which model acted)."""
        loaded = self._serving()  # one reference read: the whole call runs on this version
        spec = loaded.manifest.input
        x = spec.prepare(as_frame_batch(frames))
        if loaded.max_batch is not None and len(x) > loaded.max_batch:  # beyond TensorRT's engine: no rebuild here
            step = loaded.max_batch
            parts = [
                loaded.session.run([loaded.manifest.output_name], {spec.name: x[i : i + step]})[0]
                for i in range(0, len(x), step)
            ]
            out = np.concatenate(parts)
        else:
            out = loaded.session.run([loaded.manifest.output_name], {spec.name: x})[0]
        if loaded.mapping is not None:  # pinned: into the pinned version's space (one matmul + bias)
            out = loaded.mapping.apply(out)
        return out, loaded.manifest.version

    @property
    def compatible_with(self) -> Optional[int]:
        """The pinned version whose embedding space `embed` answers in (None: each version's own)."""
        return self._pin

    def repin(self, version: Optional[int]) -> None:
        """Serve embeddings in `version`'s space from now on (None: unpinned), e.g. after the policy head
        was refit on the version serving now. The next call already uses the new map; a pin marker for
        `version` is written in `pins/`, and the old version's marker stays (pins are per version, and
        another runtime may still serve it: delete its file once none does). ModelFileError (pin
        unchanged) when the serving version cannot be mapped into `version`'s space."""
        with self._pin_lock:
            current = self._serving()
            mapping = None if version is None else compose_to(self.export_dir, current.manifest.version, version)
            if version is not None:
                record_pin(self.export_dir, version)
            old, self._pin = self._pin, version
            self._current = replace(current, mapping=mapping)
        # The old pin file stays: another runtime may still serve that version's space (pins are per
        # version, not per runtime). Delete pins/encoder-OLD.pin once nothing uses it.
        log.info(
            "%s (%s); serving version %d%s",
            "unpinned" if version is None else f"pinned to version {version}",
            "was unpinned" if old is None else f"was pinned to {old}",
            current.manifest.version,
            f"; delete {pin_path(self.export_dir, old)} once no runtime serves version {old}'s space"
            if old is not None and old != version
            else "",
        )

    @property
    def version(self) -> int:
        """Version now serving."""
        return self._serving().manifest.version

    @property
    def manifest(self) -> dict[str, Any]:
        return self._serving().manifest.raw

    @property
    def output_dim(self) -> int:
        return self._serving().manifest.output_dim

    @property
    def failed_loads(self) -> int:
        """Versions that failed to load (each set of failing files counted once)."""
        return self._watcher.failed_loads

    @property
    def last_error(self) -> Optional[str]:
        """The last load failure, watcher error or `on_swap` failure, as one line (None: none yet)."""
        return self._watcher.last_error

    @property
    def resident_sessions(self) -> int:
        """onnxruntime sessions alive right now (serving, draining or being loaded): never above two."""
        return self._loader.resident

    @property
    def providers(self) -> list[str]:
        loaded = self._current
        return loaded.session.get_providers() if loaded else list(self._providers)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the watcher and release the sessions (calls in flight finish first)."""
        self._stop.set()
        watcher = getattr(self, "_watcher", None)
        if watcher is not None:
            watcher.stop(timeout_s)  # (not joined when closed from the watcher's own thread: an on_swap)
        self._current = None

    def _serving(self) -> Loaded:
        """The version serving now (one read of the reference); ModelFileError once closed."""
        loaded = self._current
        if loaded is None:
            raise ModelFileError("HotEncoder is closed")
        return loaded

    def __enter__(self) -> "HotEncoder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- swapping (called by the watcher) ------------------------------------------------------

    def _attach(self, loaded: Loaded) -> Loaded:
        """`loaded` with the composed map into the pinned version's space (ModelFileError if there is none)."""
        if self._pin is None:
            return replace(loaded, mapping=None)
        return replace(loaded, mapping=compose_to(self.export_dir, loaded.manifest.version, self._pin))

    def _install(self, loaded: Loaded, load_s: float) -> SwapEvent:
        with self._pin_lock:  # a repin between attaching and swapping would otherwise be undone
            return self._swap(self._attach(loaded), load_s)

    def _swap(self, loaded: Loaded, load_s: float) -> SwapEvent:
        old_version = self._current.manifest.version if self._current else None
        self._current = loaded  # the old session goes as soon as the calls in flight let go of it
        if old_version is not None:
            self.swaps += 1
        self._first.set()
        was = "first version served" if old_version is None else f"swapped from version {old_version}"
        log.info("serving encoder version %d (%s; loaded in %.2f s)", loaded.manifest.version, was, load_s)
        return SwapEvent.of(loaded, old_version, load_s, self._pin)
