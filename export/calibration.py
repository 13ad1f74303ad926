"""The calibration set (`calibration.npy`, uint8 (N, H, W, C) replay-buffer frames, drawn once and grown to
its size) on which every version's embeddings are compared, and embedding frames with a published ONNX file."""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path
from typing import Optional

import numpy as np

from agent.core.atomic import atomic_write_bytes
from agent.core.frames import as_frame_batch
from export.embedding_maps import MIN_CALIBRATION_FRAMES
from export.manifest import InputSpec
from export.sessions import CPU, create_session

log = logging.getLogger(__name__)

CALIBRATION_NAME = "calibration.npy"


def calibration_set(export_dir: Path, frames: Optional[np.ndarray], size: int) -> Optional[np.ndarray]:
    """The directory's calibration frames, uint8 (N, H, W, C): made from `frames` the first time, grown
    from later exports' frames until it holds `size`, fixed from then on.

    `frames` are replay-buffer frames (a sample per export). The set starts with up to `size` of
    them (spread evenly) once at least MIN_CALIBRATION_FRAMES are given; while it holds fewer than
    `size`, each later call adds the given frames it does not hold yet, so a set started from a
    young buffer reaches `size` over the next exports. Every write is atomic (`calibration.npy`).
    Maps fit on a smaller set stay valid: each is fit on the embeddings of both versions on the set
    of its day. None when there is no set yet and fewer than MIN_CALIBRATION_FRAMES (or None) were
    given. A stored set that is unreadable is replaced (logged); frames of another shape are ignored.
    """
    path = Path(export_dir) / CALIBRATION_NAME
    stored: Optional[np.ndarray] = None
    if path.exists():
        try:
            stored = as_frame_batch(np.load(path, allow_pickle=False))
        except Exception as exc:  # a damaged file: np.load raises several types
            log.warning("calibration set %s is unreadable (%s); drawing a new one", path, exc.__class__.__name__)
    if stored is not None and (len(stored) >= size or frames is None or len(frames) == 0):
        return stored
    if frames is None:
        return None
    frames = as_frame_batch(frames)
    if stored is not None and frames.shape[1:] != stored.shape[1:]:
        return stored  # the capture size changed: keep comparing on the frames the set was made of
    held = set() if stored is None else {hashlib.sha1(f.tobytes()).digest() for f in stored}
    fresh = []  # indices of frames not in the set yet (nor repeated within `frames`)
    for i, frame in enumerate(frames):
        key = hashlib.sha1(frame.tobytes()).digest()
        if key not in held:
            held.add(key)
            fresh.append(i)
    room = size - (0 if stored is None else len(stored))
    if stored is None and (size < MIN_CALIBRATION_FRAMES or len(fresh) < MIN_CALIBRATION_FRAMES):
        return None
    if not fresh or room <= 0:
        return stored
    pick = np.asarray(fresh)[np.unique(np.linspace(0, len(fresh) - 1, num=min(room, len(fresh))).round().astype(int))]
    chosen = np.ascontiguousarray(frames[pick] if stored is None else np.concatenate([stored, frames[pick]]))
    buffer = io.BytesIO()
    np.save(buffer, chosen, allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())
    log.info(
        "calibration set of %d frames written to %s%s",
        len(chosen),
        path,
        "" if stored is None else f" (grown from {len(stored)})",
    )
    return chosen


def embed_file(model_path: Path, spec: InputSpec, output_name: str, frames: np.ndarray, batch: int = 64) -> np.ndarray:
    """Embeddings (N, D) float32 of uint8 frames by the ONNX file at `model_path`, prepared as serving does."""
    session = create_session(model_path, [CPU], threads=1)
    out = [
        session.run([output_name], {spec.name: spec.prepare(frames[i : i + batch])})[0]
        for i in range(0, len(frames), batch)
    ]
    return np.concatenate(out).astype(np.float32)
