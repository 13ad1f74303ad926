"""Loading one published encoder version for serving: verified file, counted session, warm-up check.

`VersionLoader.load(name)` does everything `HotEncoder` needs before a version may serve, off the
serving path: read the manifest, refuse a different output dimension than the one serving (the
policy head was built on D), hash the model file against the manifest, build an onnxruntime
session from that same file (its inode, size and mtime must not change across the load, so the
file checked is the file loaded) and run one warm-up inference checked against the manifest's
input and output. Any failure is a one-line `ModelFileError`. Sessions are counted: at most
`max_resident` are alive at once (serving, draining, loading), and a load waits for a slot.

TensorRT builds its engine lazily, at the first inference, so the warm-up inference is what builds
it, here on the loader's thread, never on a serving call; the engine covers batches
1..TRT_MAX_BATCH (`HotEncoder.embed` splits larger batches) and is cached per model sha256 under
EXPORT_DIR/trt-cache, so a restart loads it in seconds. When TensorRT cannot build (or onnxruntime
fell back on its own), the version is loaded on CUDA instead and a warning says so.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import onnxruntime as ort

from agent.core.errors import ModelFileError
from export.embedding_maps import LinearMap
from export.manifest import Manifest, check_sha256, read_manifest
from export.sessions import (
    TENSORRT,
    TRT_CACHE_DIR,
    create_session,
    prune_trt_cache,
    tensorrt_options,
    trt_cache_dir,
    without_tensorrt,
)

log = logging.getLogger(__name__)

TRT_MAX_BATCH = 64  # TensorRT builds its engine for batch 1..this up front, never on the serving path
MAX_RESIDENT = 2

ProviderList = list[Union[str, tuple[str, dict[str, Any]]]]


@dataclass(frozen=True, eq=False)
class Loaded:
    """One servable version: never mutated, replaced as a whole.

    `mapping`: for a pinned runtime, the composed map into the pinned version's space (None: raw).
    """

    name: str
    session: ort.InferenceSession
    manifest: Manifest
    mapping: Optional[LinearMap] = None
    max_batch: Optional[int] = None  # TensorRT: the engine's largest batch; a larger call is split


class VersionLoader:
    """Loads versions from `export_dir` with `providers` (resolved names) and `threads` intra-op threads.

    `stop`: set when the owner closes; a load waiting for a session slot then goes ahead at once.
    `trt_fp16`: TensorRT may pick fp16 kernels. `trt_cache`: the root of TensorRT's engine caches
    (None: EXPORT_DIR/trt-cache; it must be writable, else engines are not cached, with a warning).
    """

    def __init__(
        self,
        export_dir: Path,
        providers: list[str],
        threads: Optional[int],
        stop: threading.Event,
        max_resident: int = MAX_RESIDENT,
        trt_fp16: bool = False,
        trt_cache: Optional[Path] = None,
    ) -> None:
        self.export_dir, self._providers, self._threads, self._stop = export_dir, providers, threads, stop
        self._trt_fp16 = trt_fp16
        self.trt_cache = trt_cache if trt_cache is not None else export_dir / TRT_CACHE_DIR
        self._max_resident = max_resident
        self._resident = 0
        self._resident_cond = threading.Condition()

    @property
    def resident(self) -> int:
        """onnxruntime sessions alive right now (serving, draining or being loaded)."""
        with self._resident_cond:
            return self._resident

    def load(self, name: str, serving: Optional[Manifest] = None) -> Loaded:
        """Verify and load manifest `name` (e.g. "encoder-000007.json"); ModelFileError (one line) if it may not serve.

        `serving`: the manifest of the version now serving, whose output dimension the new one must keep.
        """
        manifest = read_manifest(self.export_dir / name)
        model_path = self.export_dir / manifest.model_file
        if serving is not None and manifest.output_dim != serving.output_dim:
            raise ModelFileError(
                f"version {manifest.version} outputs D={manifest.output_dim} but version "
                f"{serving.version} serves D={serving.output_dim}; the policy head depends on D"
            )
        identity = file_identity(model_path)
        size = identity[2] if identity else "?"
        check_sha256(
            model_path, manifest.sha256, f"model file {model_path} ({size} bytes)", gone="is unreadable (missing)"
        )
        self._wait_for_slot()
        session = self._open(model_path, manifest)
        if file_identity(model_path) != identity:
            raise ModelFileError(f"model file {model_path} was replaced while it was being loaded")
        on_trt = TENSORRT in session.get_providers()
        if on_trt:
            self._prune_trt_cache()
        return Loaded(name=name, session=session, manifest=manifest, max_batch=TRT_MAX_BATCH if on_trt else None)

    def _open(self, model_path: Path, manifest: Manifest) -> ort.InferenceSession:
        """A counted session that passed its warm-up; TensorRT's engine is built by that warm-up. When
        TensorRT fails to build (or onnxruntime left it out), the version is loaded without it, logged."""
        providers = self._provider_list(manifest)
        if TENSORRT not in self._providers:
            return self._checked(model_path, manifest, providers)
        try:
            session = self._checked(model_path, manifest, providers)
        except ModelFileError as exc:
            reason = str(exc)  # the failed session is released with `exc` at the end of this block
        else:
            active = session.get_providers()
            if TENSORRT in active:
                return session
            log.warning(
                "TensorRT did not take version %d (onnxruntime fell back on its own and printed why); serving it on %s",
                manifest.version,
                ", ".join(active),
            )
            return session
        fallback = without_tensorrt(providers)
        log.warning(
            "TensorRT could not build version %d (%s); loading it on %s instead",
            manifest.version,
            reason,
            ", ".join(str(p) for p in fallback),
        )
        self._wait_for_slot()
        return self._checked(model_path, manifest, fallback)

    def _checked(self, model_path: Path, manifest: Manifest, providers: ProviderList) -> ort.InferenceSession:
        session = self._new_session(model_path, providers)
        check_session(session, manifest, model_path)
        return session

    def _wait_for_slot(self) -> None:
        """Block until fewer than `max_resident` sessions are alive, so loading one more never happens."""
        warn_at = time.monotonic() + 5.0
        with self._resident_cond:
            while self._resident >= self._max_resident and not self._stop.is_set():
                self._resident_cond.wait(0.05)
                if time.monotonic() > warn_at:
                    log.warning("still waiting for the previous encoder session to be released")
                    warn_at = float("inf")

    def _new_session(self, model_path: Path, providers: ProviderList) -> ort.InferenceSession:
        """A counted session (`create_session`), released through a finalizer when the last call lets go."""
        session = create_session(model_path, providers, self._threads)
        with self._resident_cond:
            self._resident += 1
        weakref.finalize(session, self._released)
        return session

    def _released(self) -> None:
        with self._resident_cond:
            self._resident -= 1
            self._resident_cond.notify_all()

    def _provider_list(self, manifest: Manifest) -> ProviderList:
        """The resolved providers; TensorRT with a batch profile of 1..TRT_MAX_BATCH for this input and
        this model's engine cache (created here; not writable: no cache, logged)."""
        providers: ProviderList = []
        for name in self._providers:
            if name == TENSORRT:
                spec = manifest.input
                wanted = trt_cache_dir(self.trt_cache, manifest.sha256, self._trt_fp16)
                cache: Optional[Path] = wanted
                try:
                    wanted.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    log.warning(
                        "TensorRT engine cache %s cannot be created (%s): the engine is rebuilt at every start",
                        cache,
                        exc.strerror or exc,
                    )
                    cache = None
                options = tensorrt_options(spec.name, spec.shape(1), spec.shape(TRT_MAX_BATCH), cache, self._trt_fp16)
                providers.append((TENSORRT, options))
            else:
                providers.append(name)
        return providers

    def _prune_trt_cache(self) -> None:
        """Drop cached engines of versions no longer in the export directory (retention removed them)."""
        published: set[str] = set()
        for path in self.export_dir.glob("encoder-*.json"):
            try:
                published.add(read_manifest(path).sha256)
            except ModelFileError:
                continue
        if published:
            removed = prune_trt_cache(self.trt_cache, published)
            if removed:
                log.info("removed %d TensorRT engine caches of versions no longer published", len(removed))


def check_session(session: ort.InferenceSession, manifest: Manifest, model_path: Path) -> None:
    """The graph takes what the manifest says, and one warm-up inference gives (1, D) finite values."""
    spec = manifest.input
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != spec.name or inputs[0].type != spec.onnx_type:
        got = ", ".join(f"{i.name}:{i.type}" for i in inputs)
        raise ModelFileError(f"{model_path} takes {got}; its manifest says {spec.name}:{spec.onnx_type}")
    if list(inputs[0].shape[1:]) != list(spec.shape(1)[1:]):
        raise ModelFileError(
            f"{model_path} input shape {inputs[0].shape} does not match the manifest's {spec.shape(1)}"
        )
    if manifest.output_name not in {o.name for o in session.get_outputs()}:
        raise ModelFileError(f"{model_path} has no output named {manifest.output_name!r}")
    warm = spec.prepare(np.zeros((1, spec.height, spec.width, 3), dtype=np.uint8))
    try:
        out = session.run([manifest.output_name], {spec.name: warm})[0]
    except Exception as exc:  # onnxruntime's own error types
        raise ModelFileError(f"{model_path} failed its warm-up inference: {str(exc).splitlines()[0][:300]}") from None
    if out.shape != (1, manifest.output_dim) or not np.isfinite(out).all():
        raise ModelFileError(
            f"{model_path} warm-up gave shape {out.shape} (finite: {bool(np.isfinite(out).all())}), "
            f"expected (1, {manifest.output_dim})"
        )


def file_identity(path: Path) -> Optional[tuple[int, int, int, int]]:
    """Which file is at `path` (inode, device, size, mtime): published files are never rewritten in place."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)


def file_stamp(path: Path) -> Optional[tuple[int, int]]:
    """(mtime ns, size) of `path`, or None when it is not there: what changed since a failed load."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)
