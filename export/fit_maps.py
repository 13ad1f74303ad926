"""Backward-compatible embeddings: light linear maps from each version into older versions' spaces.

A policy head fit on version P's embeddings reads coordinates that later versions no longer mean.
Following BC-Aligner (Hu et al., KDD 2022, "Learning Backward Compatible Embeddings"), each new
version V gets one affine map `z_prev ≈ z_V @ matrix + bias` into the previous version's space, fit
in closed form on a fixed calibration set of frames and stored beside the version
(`encoder-NNNNNN.map.npz`, hashed in its manifest). For every version a runtime is pinned to
(`pins/`) whose model is still on disk, V also gets a direct map into that version's space
(`encoder-NNNNNN.to-PPPPPP.map.npz`): a pinned runtime uses the direct map, and composes the chain
V → maps_to → ... → P only where there is none (a pin set after V was published). Measured on
benchmarks/bench_compat.py: the composed chain loses accuracy hop by hop (small per-hop errors
compound), the direct map does not.

This module fits a new version's maps at export (`fit_for_export`); the pieces: `export.embedding_maps`
(the maps and their fitting), `export.map_files` (reading and composing map files), `export.pins`
(the pinned-versions store), `export.calibration` (the calibration set), `export.drift_gate`.

Files in the export directory (besides what `export.publish` writes):
  calibration.npy                     uint8 (N, H, W, C) frames as the replay buffer held them, drawn once
  encoder-NNNNNN.map.npz              arrays "matrix" (D_new, D_prev) and "bias" (D_prev,), float32
  encoder-NNNNNN.to-PPPPPP.map.npz    the same arrays, straight into pinned version P's space
  pins/encoder-NNNNNN.pin             a runtime is pinned to that version: retention keeps it and its chain

The manifest's "compat" section: {"maps_to", "map_file", "sha256", "method", "r2", "cka",
"fit_frames", "holdout_frames", "direct"} — or {"maps_to": null, "reason"} when no map to the
previous version could be fit. "direct" is a list of {"maps_to": P, "map_file", "sha256", "method",
"r2", "cka", "fit_frames", "holdout_frames"}, one per pinned version (empty without pins).

Torch-free (numpy, onnxruntime through `export.sessions`).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np

from agent.core.config import ExportConfig
from agent.core.errors import ModelFileError
from export.calibration import calibration_set, embed_file
from export.drift_gate import drift_gate
from export.embedding_maps import MIN_CALIBRATION_FRAMES, CompatFit, fit_compat
from export.manifest import InputSpec, Manifest, manifest_filename, read_latest, read_verified
from export.map_files import map_bytes
from export.pins import read_pins

log = logging.getLogger(__name__)


def previous_version(export_dir: Path) -> Optional[Manifest]:
    """The version a new one maps to: the one LATEST names (what serves; after a rollback, the rolled-back-to
    version), checked against its sha256. None when nothing is published or it does not verify."""
    try:
        name = read_latest(Path(export_dir))
        return None if name is None else read_verified(export_dir, name)
    except (ModelFileError, OSError) as exc:
        log.warning("no compatibility map for this export: the previous version is unusable (%s)", exc)
        return None


def _entry(target: int, fit: CompatFit, data: bytes) -> dict[str, Any]:
    """A manifest entry for a map into `target`'s space (the publisher adds "map_file")."""
    return {
        "maps_to": target,
        "sha256": hashlib.sha256(data).hexdigest(),
        "method": fit.method,
        "r2": round(fit.r2, 6),
        "cka": round(fit.cka, 6),
        "fit_frames": fit.fit_frames,
        "holdout_frames": fit.holdout_frames,
    }


def fit_for_export(
    model_path: Path,
    spec: InputSpec,
    output_name: str,
    export_dir: Path,
    frames: Optional[np.ndarray],
    cfg: ExportConfig,
) -> tuple[dict[str, Any], dict[Optional[int], bytes]]:
    """The compat section for a new export at `model_path`, and its map files' bytes by target: key None
    is the map into the previous version's space, key P a direct map into pinned version P's ({}: no map).

    `frames`: replay-buffer frames to draw the calibration set from if there is none yet (None:
    these frames are not the robot's, e.g. the demo scene standing in for a missing buffer).

    Embeds the calibration set with the new file, with the version LATEST names and with each
    pinned version (`pins/`) whose model verifies, fits `cfg.compat_map` new → each of them, and
    applies the drift gate to every map: ExportRefused when a held-out R² is below
    `cfg.min_compatibility`. No map (and no refusal) for the first version, without a calibration
    set, or when the previous version's files do not verify; the reason is recorded. A pinned
    version whose model is gone or corrupt gets no direct map (logged): its runtime composes the chain.
    """
    if cfg.calibration_frames == 0:
        return {"maps_to": None, "reason": "export.calibration_frames is 0"}, {}
    calibration = calibration_set(export_dir, frames, cfg.calibration_frames)
    if calibration is None:
        given = "none from the replay buffer" if frames is None else len(frames)
        reason = f"no calibration set yet (needs {MIN_CALIBRATION_FRAMES}+ replay-buffer frames, got {given})"
        return {"maps_to": None, "reason": reason}, {}
    previous = previous_version(export_dir)
    if previous is None:
        return {"maps_to": None, "reason": "no usable previous version"}, {}
    new = embed_file(model_path, spec, output_name, calibration)

    def fit_to(manifest: Manifest, pinned: bool) -> tuple[dict[str, Any], bytes]:
        old = embed_file(Path(export_dir) / manifest.model_file, manifest.input, manifest.output_name, calibration)
        fit = fit_compat(new, old, cfg.compat_map, cfg.compat_ridge)
        drift_gate(fit, manifest.version, cfg, pinned)
        data = map_bytes(fit.linear)
        return _entry(manifest.version, fit, data), data

    pins = read_pins(export_dir)
    section, data = fit_to(previous, pinned=previous.version in pins)
    maps: dict[Optional[int], bytes] = {None: data}
    section["direct"] = []
    for pin in sorted(pins - {previous.version}):
        if pin > previous.version:
            continue  # pinned to a version above what serves (a rollback went below it): it maps to nothing older
        try:
            pinned = read_verified(export_dir, manifest_filename(pin))
        except (ModelFileError, OSError) as exc:
            log.warning("no direct map into pinned version %d (%s); its runtime composes the chain of maps", pin, exc)
            continue
        entry, maps[pin] = fit_to(pinned, pinned=True)
        section["direct"].append(entry)
    return section, maps
