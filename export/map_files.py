"""Embedding-map files in an export directory: their names, bytes, reading (sha256-checked) and composing.

  encoder-NNNNNN.map.npz              arrays "matrix" (D_new, D_prev) and "bias" (D_prev,), float32
  encoder-NNNNNN.to-PPPPPP.map.npz    the same arrays, straight into pinned version P's space
A manifest's "compat" section names them (see `export.fit_maps`). Torch-free.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from agent.core.errors import ModelFileError
from export.embedding_maps import LinearMap
from export.manifest import Manifest, check_sha256, manifest_filename, read_manifest

log = logging.getLogger(__name__)


def map_filename(version: int, to: Optional[int] = None) -> str:
    """`encoder-NNNNNN.map.npz` (the map to the previous version), or with `to` the direct map into `to`'s space."""
    return f"encoder-{version:06d}.map.npz" if to is None else f"encoder-{version:06d}.to-{to:06d}.map.npz"


def map_bytes(linear: LinearMap) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, matrix=linear.matrix.astype(np.float32), bias=linear.bias.astype(np.float32))
    return buffer.getvalue()


def read_map(export_dir: Path, manifest: Manifest) -> tuple[int, LinearMap]:
    """The map a version's manifest describes into the previous version's space: (version it maps to,
    map). ModelFileError (one line) when the manifest has none, or the file is missing, fails its
    sha256, or holds wrong arrays."""
    compat = manifest.raw.get("compat")
    version = manifest.version
    if not isinstance(compat, dict) or compat.get("maps_to") is None:
        reason = compat.get("reason") if isinstance(compat, dict) else None
        raise ModelFileError(f"version {version} has no compatibility map" + (f" ({reason})" if reason else ""))
    return _read_entry(export_dir, manifest, compat, direct=False)


def direct_targets(manifest: Manifest) -> list[int]:
    """Versions the manifest lists a direct map into (its "compat" → "direct" entries); [] when none or malformed."""
    compat = manifest.raw.get("compat")
    entries = compat.get("direct") if isinstance(compat, dict) else None
    if not isinstance(entries, list):
        return []
    return [int(e["maps_to"]) for e in entries if isinstance(e, dict) and isinstance(e.get("maps_to"), int)]


def read_direct_map(export_dir: Path, manifest: Manifest, pin: int) -> LinearMap:
    """The version's direct map into `pin`'s space. ModelFileError (one line) when the manifest lists
    none, or its file is missing, fails its sha256, or holds wrong arrays."""
    compat = manifest.raw.get("compat")
    entries = compat.get("direct") if isinstance(compat, dict) else None
    entry = next((e for e in entries or [] if isinstance(e, dict) and e.get("maps_to") == pin), None)
    if entry is None:
        raise ModelFileError(f"version {manifest.version} has no direct map into version {pin}'s space")
    return _read_entry(export_dir, manifest, entry, direct=True)[1]


def _read_entry(export_dir: Path, manifest: Manifest, entry: dict[str, Any], *, direct: bool) -> tuple[int, LinearMap]:
    version = manifest.version
    try:
        maps_to = int(entry["maps_to"])
        name, digest = str(entry["map_file"]), str(entry["sha256"])
    except (KeyError, TypeError, ValueError):
        raise ModelFileError(f"version {version}'s manifest has a malformed compat section") from None
    if name != map_filename(version, maps_to if direct else None) or maps_to >= version:
        raise ModelFileError(f"version {version}'s manifest names map {name!r} to version {maps_to}: not allowed")
    path = Path(export_dir) / name
    check_sha256(path, digest, f"compatibility map {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            matrix, bias = np.asarray(data["matrix"], np.float32), np.asarray(data["bias"], np.float32)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelFileError(f"compatibility map {path} is unreadable ({exc.__class__.__name__})") from None
    if matrix.ndim != 2 or bias.shape != (matrix.shape[1],) or matrix.shape[0] != manifest.output_dim:
        raise ModelFileError(
            f"compatibility map {path} has shapes {matrix.shape}/{bias.shape}, not ({manifest.output_dim}, D)/(D,)"
        )
    if not (np.isfinite(matrix).all() and np.isfinite(bias).all()):
        raise ModelFileError(f"compatibility map {path} holds non-finite values")
    return maps_to, LinearMap(matrix, bias)


def compose_to(export_dir: Path, version: int, pin: int) -> Optional[LinearMap]:
    """One map taking `version`'s embeddings into `pin`'s space: the version's direct map into `pin`
    when it has one, else composed down the maps_to chain (taking the first direct map into `pin`
    found on the way). A direct map that fails to load is logged and the chain is used instead.

    None when `version` is the pin (nothing to map). ModelFileError (one line) naming the broken
    link when the chain cannot reach `pin`: `version` older than the pin, a manifest or map missing,
    corrupt or failing its hash, or a chain that skips past the pin (e.g. after a rollback).
    """
    export_dir = Path(export_dir)
    if version < pin:
        raise ModelFileError(
            f"version {version} is older than the pinned version {pin}; a pinned encoder serves {pin} or later"
        )
    composed: Optional[LinearMap] = None
    current = version
    while current != pin:
        try:
            manifest = read_manifest(export_dir / manifest_filename(current))
            linear, maps_to = None, pin
            if pin in direct_targets(manifest):
                try:
                    linear = read_direct_map(export_dir, manifest, pin)
                except ModelFileError as exc:
                    log.warning("%s; composing version %d's chain of maps instead", exc, current)
            if linear is None:
                maps_to, linear = read_map(export_dir, manifest)
        except ModelFileError as exc:
            raise ModelFileError(
                f"version {version} cannot be mapped into pinned version {pin}'s space: {exc}"
            ) from None
        if maps_to < pin:
            raise ModelFileError(
                f"version {version} cannot be mapped into pinned version {pin}'s space: its chain goes from "
                f"{current} to {maps_to}, past the pin"
            )
        if composed is not None and composed.dims[1] != linear.dims[0]:
            raise ModelFileError(
                f"version {version}: map of version {current} takes D={linear.dims[0]}, chain gives "
                f"D={composed.dims[1]}"
            )
        composed = linear if composed is None else composed.then(linear)
        current = maps_to
    return composed


def chain_of(export_dir: Path, version: int, floor: int) -> list[int]:
    """Versions whose maps `compose_to(version, floor)` reads: `version`'s maps_to chain down to `floor`
    (both included when reached), ending early at a version with a direct map into `floor`'s space.
    Best effort, for retention: a broken link ends the walk."""
    chain, current = [version], version
    while current > floor:
        try:
            tree = json.loads((Path(export_dir) / manifest_filename(current)).read_text())
            compat = tree.get("compat", {})
            direct = compat.get("direct") if isinstance(compat.get("direct"), list) else []
            if any(isinstance(d, dict) and d.get("maps_to") == floor for d in direct):
                break  # served through its direct map: nothing below it is read
            nxt = compat.get("maps_to")
            current = int(nxt) if nxt is not None and int(nxt) < current else -1
        except (OSError, ValueError, TypeError, AttributeError):
            break
        if current < floor:
            break
        chain.append(current)
    return chain
