"""Atomic, versioned publishing into an export directory that a runtime polls while it is written.

Order on disk (each step durable before the next): model file → manifest → `LATEST`. A reader
that follows `LATEST` therefore only ever finds a complete manifest naming a complete model, and
a crash at any point leaves the previous version published. Version numbers are claimed with a
hard link (fails if the name exists), so they continue after a restart and never collide with a
second publisher on the same directory.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Optional

from agent.core.atomic import atomic_write_bytes, fsync_dir, remove_stale_temps, temp_name
from agent.core.errors import ModelFileError, StorageError
from export.manifest import (
    LATEST_NAME,
    MANIFEST_FORMAT,
    MODEL_SUFFIX,
    artifact_filename,
    manifest_filename,
    model_filename,
    parse_version,
    read_latest,
    read_verified,
    sha256_file,
)
from export.map_files import chain_of, map_filename
from export.pins import read_pins

log = logging.getLogger(__name__)
_ORPHAN_S = 60.0  # a model file this long without its manifest was left by a killed publisher
_KEPT_ON_CHAIN = (".json", ".npz")  # what a version on a pinned runtime's map chain keeps: manifest and maps


@dataclass(frozen=True)
class Artifact:
    """A file an export target wrote besides the model (export/targets/): published as `encoder-NNNNNN<suffix>`
    and listed in the manifest's "artifacts" under the target's name with its sha256, size and `fields`."""

    path: Path  # a Publisher.temp_path
    suffix: str
    fields: dict[str, Any]


class Publisher:
    """Publishes verified models as `encoder-NNNNNN.onnx` + `.json` (+ each export target's artifact) and keeps the
    newest `keep` versions, every file of a version going with it."""

    def __init__(self, export_dir: Path, keep: int) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.export_dir = Path(export_dir)
        self.keep = keep
        try:
            self.export_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ModelFileError(f"cannot create export directory {self.export_dir}: {exc.strerror}") from None
        self._versions_on_disk()  # a restart cleans up after the publisher it replaces

    def versions(self) -> list[int]:
        """Every version with a model or a manifest on disk (a half-finished one still uses up its number)."""
        found = {parse_version(p.name) for p in self.export_dir.iterdir()}
        return sorted(v for v in found if v is not None)

    def next_version(self) -> int:
        return max(self.versions(), default=0) + 1

    def temp_path(self, suffix: str = MODEL_SUFFIX) -> Path:
        """A private file name in the export directory (same filesystem, so the final rename is atomic)."""
        return self.export_dir / temp_name(f"model{suffix}")

    def publish(
        self,
        model_tmp: Path,
        manifest: dict[str, Any],
        maps: Optional[Mapping[Optional[int], bytes]] = None,
        artifacts: Optional[Mapping[str, Artifact]] = None,
    ) -> int:
        """Move `model_tmp` (a temp_path) into place under a new version; return the version.

        `manifest` holds everything but the fields fixed here: format, version, model_file,
        sha256, size_bytes and the publication time. `maps`: the version's compatibility maps
        (`export.fit_maps.fit_for_export`): key None the map into the previous version's space, written
        as `encoder-NNNNNN.map.npz`, key P a direct map into version P's, `encoder-NNNNNN.to-PPPPPP.map.npz`;
        all written before the manifest that names them. `artifacts`: the other export targets' files by
        target name, moved into place after the model and listed (file, sha256, size_bytes, the target's
        fields) under the manifest's "artifacts"; all temp files are gone afterwards, published or not.
        """
        artifacts = dict(artifacts or {})
        try:
            for path in [model_tmp, *(a.path for a in artifacts.values())]:
                with open(path, "rb+") as f:
                    os.fsync(f.fileno())
            digest = sha256_file(model_tmp)
            size = model_tmp.stat().st_size
            listed = {
                name: {"sha256": sha256_file(a.path), "size_bytes": a.path.stat().st_size, **a.fields}
                for name, a in artifacts.items()
            }
            version = self._claim(model_tmp)
            model_tmp.unlink()
            for name, artifact in artifacts.items():  # the claimed number is ours: no other file can take these names
                final = artifact_filename(version, artifact.suffix)
                os.replace(artifact.path, self.export_dir / final)
                listed[name] = {"file": final, **listed[name]}
            fsync_dir(self.export_dir)
            now = time.time()
            tree = dict(manifest)
            tree.update(
                format=MANIFEST_FORMAT,
                version=version,
                model_file=model_filename(version),
                sha256=digest,
                size_bytes=size,
                created_unix=now,
                created_utc=datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
            )
            if listed:
                tree["artifacts"] = listed
            if maps:
                tree["compat"] = self._write_maps(version, tree["compat"], maps)
            name = manifest_filename(version)
            atomic_write_bytes(self.export_dir / name, json.dumps(tree, indent=2).encode())
            self._point_latest()
        except OSError as exc:
            raise StorageError(f"cannot publish into {self.export_dir}: {exc.strerror or exc}") from None
        finally:
            for path in [model_tmp, *(a.path for a in artifacts.values())]:
                path.unlink(missing_ok=True)
        self.prune()
        return version

    def _write_maps(self, version: int, compat: dict[str, Any], maps: Mapping[Optional[int], bytes]) -> dict[str, Any]:
        """Write each map file and return the compat section with the file names filled in."""
        compat = {**compat, "direct": [dict(entry) for entry in compat.get("direct", [])]}
        for target, data in maps.items():
            atomic_write_bytes(self.export_dir / map_filename(version, target), data)
        if None in maps:
            compat["map_file"] = map_filename(version)
        for entry in compat["direct"]:
            entry["map_file"] = map_filename(version, int(entry["maps_to"]))
        return compat

    def _claim(self, model_tmp: Path) -> int:
        while True:
            version = self.next_version()
            target = self.export_dir / model_filename(version)
            try:
                os.link(model_tmp, target)
                os.utime(
                    target
                )  # its age counts from the claim: prune treats an old model without manifest as orphaned
                return version
            except FileExistsError:
                continue  # another publisher took this number a moment ago

    def _point_latest(self) -> None:
        """Point LATEST at the newest manifest on disk, re-checking after each write.

        With two publishers, one may write an older name after the other wrote a newer one; the
        re-check after every write means the last writer always leaves the newest version.
        """
        written = None
        while True:
            newest = max(
                (v for p in self.export_dir.glob("encoder-*.json") if (v := parse_version(p.name))), default=None
            )
            if newest is None or newest == written:
                return
            atomic_write_bytes(self.export_dir / LATEST_NAME, (manifest_filename(newest) + "\n").encode())
            written = newest

    def _latest_version(self) -> Optional[int]:
        try:
            name = read_latest(self.export_dir)
        except ModelFileError:
            return None
        return parse_version(name) if name else None

    def prune(self) -> list[Path]:
        """Delete all but the newest `keep` complete versions; never what LATEST names, nor a pinned version
        (`pins/`, written by a runtime with `compatible_with`). Versions on the maps_to chain from a kept
        version down to a pin lose only their model file: a pinned runtime composes their maps.
        Returns what went.

        Also removes what killed publishers leave: temp files whose writer is gone, and a model
        file that has waited over a minute for its manifest (`publish` writes it right after).
        """
        files = self._versions_on_disk()
        complete = sorted((v for v, paths in files.items() if _complete(v, paths)), reverse=True)
        kept = set(complete[: self.keep])
        latest = self._latest_version()
        if latest is not None:
            kept.add(latest)
        if not kept:
            return []
        oldest_kept = min(kept)
        pins = read_pins(self.export_dir)
        chain: set[int] = set()  # their manifests and maps stay (a pinned runtime composes them), models go
        for pin in pins:
            for version in [v for v in kept if v >= pin]:
                chain.update(chain_of(self.export_dir, version, pin))
        kept |= pins
        removed = []
        for version, paths in files.items():
            # Incomplete versions above the oldest kept one may be another publisher's work in progress.
            if version in kept or (version > oldest_kept and not _complete(version, paths)):
                continue
            if version in chain:
                paths = [p for p in paths if p.suffix not in _KEPT_ON_CHAIN]
            for path in sorted(paths, key=lambda p: p.suffix != ".json"):  # manifest first
                path.unlink(missing_ok=True)
                removed.append(path)
        if removed:
            fsync_dir(self.export_dir)
            log.info("retention removed %s", ", ".join(p.name for p in removed))
        return removed

    def _versions_on_disk(self) -> dict[int, list[Path]]:
        """Files of each version, after removing what killed publishers left (see `prune`)."""
        remove_stale_temps(self.export_dir)
        files: dict[int, list[Path]] = {}
        for path in self.export_dir.iterdir():
            version = parse_version(path.name)
            if version is not None:
                files.setdefault(version, []).append(path)
        for version, paths in list(files.items()):
            model = [p for p in paths if p.name == model_filename(version)]
            if model and not any(p.suffix == ".json" for p in paths) and _age_s(model[0]) > _ORPHAN_S:
                try:
                    for path in paths:
                        path.unlink()
                except OSError:
                    continue
                log.info(
                    "removed %s: its manifest was never written (publisher interrupted)",
                    ", ".join(p.name for p in paths),
                )
                del files[version]
        return files


def _complete(version: int, paths: list[Path]) -> bool:
    """A published version: its model and its manifest are both there (maps and other artifacts are optional)."""
    names = {p.name for p in paths}
    return model_filename(version) in names and manifest_filename(version) in names


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def rollback(export_dir: Path, to: Optional[int] = None) -> tuple[Optional[int], int]:
    """Point LATEST at an earlier published version (default: the newest complete one below what LATEST
    names); returns (version LATEST named before, version it names now).

    The target is checked first (its manifest parses, its model file is there and matches the
    sha256), then LATEST is replaced atomically; a running HotEncoder follows at its next poll. The
    next version a publisher writes is pointed at as usual. ModelFileError (one line, nothing
    changed) for an unknown version, a missing or corrupt file, or nothing earlier to go back to.
    """
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise ModelFileError(f"export directory {export_dir} does not exist")
    name = read_latest(export_dir)
    current = parse_version(name) if name else None
    published = sorted({v for p in export_dir.glob("encoder-*.json") if (v := parse_version(p.name)) is not None})
    servable = [v for v in published if (export_dir / model_filename(v)).exists()]  # pinned chains keep manifests only
    if to is None:
        below = [v for v in servable if current is None or v < current]
        if not below:
            raise ModelFileError(f"nothing to roll back to in {export_dir}: no version below {current}")
        to = below[-1]
    elif to not in published:
        listing = ", ".join(str(v) for v in servable) or "none"
        raise ModelFileError(f"version {to} is not published in {export_dir} (versions there: {listing})")
    read_verified(export_dir, manifest_filename(to), f"cannot roll back to version {to}")
    try:
        atomic_write_bytes(export_dir / LATEST_NAME, (manifest_filename(to) + "\n").encode())
    except OSError as exc:
        raise StorageError(f"cannot rewrite {export_dir / LATEST_NAME}: {exc.strerror or exc}") from None
    log.info("LATEST rolled back from version %s to %d", current, to)
    return current, to
