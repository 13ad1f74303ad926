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

Files in the export directory (besides what `export.publish` writes):
  calibration.npy                     uint8 (N, H, W, C) frames as the replay buffer held them, drawn once
  encoder-NNNNNN.map.npz              arrays "matrix" (D_new, D_prev) and "bias" (D_prev,), float32
  encoder-NNNNNN.to-PPPPPP.map.npz    the same arrays, straight into pinned version P's space
  pins/encoder-NNNNNN.pin             a runtime is pinned to that version: retention keeps it and its chain

The manifest's "compat" section: {"maps_to", "map_file", "sha256", "method", "r2", "cka",
"fit_frames", "holdout_frames", "direct"} — or {"maps_to": null, "reason"} when no map to the
previous version could be fit. "direct" is a list of {"maps_to": P, "map_file", "sha256", "method",
"r2", "cka", "fit_frames", "holdout_frames"}, one per pinned version (empty without pins).

Torch-free (numpy, onnxruntime through `export.sessions`): the runtime composes maps with it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from agent.core.atomic import atomic_write_bytes
from agent.core.config import ExportConfig
from agent.core.errors import ExportRefused, ModelFileError
from agent.core.frames import as_frame_batch
from export.manifest import (
    InputSpec,
    Manifest,
    check_sha256,
    manifest_filename,
    parse_version,
    read_latest,
    read_manifest,
    read_verified,
)
from export.sessions import CPU, create_session

log = logging.getLogger(__name__)

CALIBRATION_NAME = "calibration.npy"
PINS_DIR = "pins"
MIN_CALIBRATION_FRAMES = 32  # below this a held-out R² means little: no calibration set is made
HOLDOUT_EVERY = 4  # every 4th calibration frame is held out to measure the fit
MIN_GATE_HOLDOUT = 32  # the drift gate refuses only on an R² measured on at least this many held-out frames
METHODS = ("ridge", "procrustes")
_PIN_RE = re.compile(r"^encoder-(\d{6,})\.pin$")


def map_filename(version: int, to: Optional[int] = None) -> str:
    """`encoder-NNNNNN.map.npz` (the map to the previous version), or with `to` the direct map into `to`'s space."""
    return f"encoder-{version:06d}.map.npz" if to is None else f"encoder-{version:06d}.to-{to:06d}.map.npz"


# --------------------------------------------------------------------------- the maps


@dataclass(frozen=True)
class LinearMap:
    """`apply(z) = z @ matrix + bias`: (N, D_in) float32 → (N, D_out) float32."""

    matrix: np.ndarray  # (D_in, D_out) float32
    bias: np.ndarray  # (D_out,) float32

    @property
    def dims(self) -> tuple[int, int]:
        return int(self.matrix.shape[0]), int(self.matrix.shape[1])

    def apply(self, z: np.ndarray) -> np.ndarray:
        return z @ self.matrix + self.bias

    def then(self, older: "LinearMap") -> "LinearMap":
        """This map followed by `older` (this one's output space is `older`'s input space), as one map:
        (z A + a) B + b = z (A B) + (a B + b). Composed in float64, stored as float32."""
        a, b = self.matrix.astype(np.float64), older.matrix.astype(np.float64)
        matrix = a @ b
        bias = self.bias.astype(np.float64) @ b + older.bias.astype(np.float64)
        return LinearMap(matrix.astype(np.float32), bias.astype(np.float32))


def fit_ridge(x: np.ndarray, y: np.ndarray, ridge: float = 1e-3) -> LinearMap:
    """Least squares with a ridge and a bias: argmin_W ||Xc W - Yc||² + λ||W||², b = ȳ - x̄ W.

    x: (N, D_in), y: (N, D_out). λ = `ridge` × trace(Xcᵀ Xc) / D_in, so the penalty is relative to
    the features' scale (1e-3 barely shrinks a well-posed fit, and keeps N < D_in solvable).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc
    lam = ridge * max(np.trace(gram) / gram.shape[0], 1e-12)
    matrix = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), xc.T @ yc)
    return LinearMap(matrix.astype(np.float32), (my - mx @ matrix).astype(np.float32))


def fit_procrustes(x: np.ndarray, y: np.ndarray) -> LinearMap:
    """Orthogonal Procrustes with scale and bias: W = s R, R orthogonal (semi-orthogonal when D_in ≠ D_out).

    Source: Schönemann (1966) / Gower & Dijksterhuis, "Procrustes Problems" (2004): with centred
    X, Y and Xcᵀ Yc = U Σ Vᵀ, R = U Vᵀ minimises ||Xc R - Yc||_F and s = tr(Σ) / ||Xc||_F².
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    u, sigma, vt = np.linalg.svd(xc.T @ yc, full_matrices=False)
    scale = sigma.sum() / max(float((xc**2).sum()), 1e-12)
    matrix = scale * (u @ vt)
    return LinearMap(matrix.astype(np.float32), (my - mx @ matrix).astype(np.float32))


def fit_method(x: np.ndarray, y: np.ndarray, method: str, ridge: float = 1e-3) -> LinearMap:
    if method == "ridge":
        return fit_ridge(x, y, ridge)
    if method == "procrustes":
        return fit_procrustes(x, y)
    raise ValueError(f"unknown compatibility map method {method!r}; allowed: {', '.join(METHODS)}")


def r2_score(predicted: np.ndarray, target: np.ndarray) -> float:
    """Fraction of the target's variance (summed over dimensions) the prediction explains: 1 - SS_res / SS_tot.
    1 is a perfect map, 0 no better than the mean; negative is worse than the mean."""
    target = np.asarray(target, np.float64)
    residual = float(((target - predicted) ** 2).sum())
    total = float(((target - target.mean(0)) ** 2).sum())
    return 1.0 - residual / total if total > 0 else (1.0 if residual == 0 else float("-inf"))


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two representations of the same N inputs, x: (N, D1), y: (N, D2), in [0, 1].

    Kornblith et al., ICML 2019, "Similarity of Neural Network Representations Revisited", eq. for
    linear CKA on centred X, Y: ||Yᵀ X||_F² / (||Xᵀ X||_F ||Yᵀ Y||_F). Invariant to orthogonal
    transforms and isotropic scaling, so it measures drift a linear map cannot undo only partly;
    1 means the same space up to rotation and scale.
    """
    x = np.asarray(x, np.float64) - np.mean(x, 0)
    y = np.asarray(y, np.float64) - np.mean(y, 0)
    denominator = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(np.linalg.norm(y.T @ x) ** 2 / denominator) if denominator > 0 else 0.0


@dataclass(frozen=True)
class CompatFit:
    """A map new → previous and how well it holds on calibration frames it was not fit on."""

    linear: LinearMap
    method: str
    r2: float  # of the map fit without the held-out frames, measured on them
    cka: float  # linear CKA of the two versions' embeddings on the held-out frames
    fit_frames: int
    holdout_frames: int


def fit_compat(new: np.ndarray, previous: np.ndarray, method: str = "ridge", ridge: float = 1e-3) -> CompatFit:
    """Fit a map from `new` (N, D_new) to `previous` (N, D_prev) embeddings of the same N frames.

    Every `HOLDOUT_EVERY`-th frame is held out: a map fit on the others is scored there (R²), and
    CKA is measured there. The map returned is then refit on all N frames (more data, same method).
    """
    new, previous = np.asarray(new, np.float64), np.asarray(previous, np.float64)
    if new.shape[0] != previous.shape[0] or new.shape[0] < MIN_CALIBRATION_FRAMES:
        raise ValueError(f"need the same ≥ {MIN_CALIBRATION_FRAMES} frames on both sides, got {new.shape[0]} and {previous.shape[0]}")
    held = np.zeros(len(new), dtype=bool)
    held[::HOLDOUT_EVERY] = True
    trial = fit_method(new[~held], previous[~held], method, ridge)
    r2 = r2_score(trial.apply(new[held]), previous[held])
    cka = linear_cka(new[held], previous[held])
    linear = fit_method(new, previous, method, ridge)
    return CompatFit(linear, method, r2, cka, int((~held).sum()), int(held.sum()))


def drift_record(export_dir: Path, version: int) -> dict[str, Any]:
    """How far `version` moved, from its manifest's compat section, for metrics and status lines:
    {"r2": held-out R² of the map to the previous version, "cka_prev": linear CKA to it,
    "cka_pinned": {"P": linear CKA to pinned version P}} (JSON keys are strings). {} when the version
    has no map (the first one, no calibration set) or its manifest cannot be read."""
    try:
        compat = read_manifest(Path(export_dir) / manifest_filename(version)).raw.get("compat")
    except ModelFileError:
        return {}
    if not isinstance(compat, dict) or not isinstance(compat.get("maps_to"), int):
        return {}
    direct = compat.get("direct") if isinstance(compat.get("direct"), list) else []
    pinned = {str(d["maps_to"]): d.get("cka") for d in direct if isinstance(d, dict) and isinstance(d.get("maps_to"), int)}
    if compat["maps_to"] in read_pins(export_dir):
        pinned[str(compat["maps_to"])] = compat.get("cka")
    return {"r2": compat.get("r2"), "cka_prev": compat.get("cka"), "cka_pinned": pinned}


# --------------------------------------------------------------------------- files


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
        raise ModelFileError(f"compatibility map {path} has shapes {matrix.shape}/{bias.shape}, not ({manifest.output_dim}, D)/(D,)")
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
        raise ModelFileError(f"version {version} is older than the pinned version {pin}; a pinned encoder serves {pin} or later")
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
            raise ModelFileError(f"version {version} cannot be mapped into pinned version {pin}'s space: {exc}") from None
        if maps_to < pin:
            raise ModelFileError(
                f"version {version} cannot be mapped into pinned version {pin}'s space: its chain goes from "
                f"{current} to {maps_to}, past the pin"
            )
        if composed is not None and composed.dims[1] != linear.dims[0]:
            raise ModelFileError(f"version {version}: map of version {current} takes D={linear.dims[0]}, chain gives D={composed.dims[1]}")
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


# --------------------------------------------------------------------------- pins


def pin_path(export_dir: Path, version: int) -> Path:
    return Path(export_dir) / PINS_DIR / f"encoder-{version:06d}.pin"


def write_pin(export_dir: Path, version: int) -> None:
    """Mark `version` as pinned by a runtime (kept after it stops: retention keeps its chain until
    the pin is moved with `repin` or the file is deleted). Raises OSError if it cannot be written."""
    path = pin_path(export_dir, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, f"{version}\n".encode())


def check_pinnable(export_dir: Path, version: int) -> None:
    """ModelFileError (one line) when `version` can never be served as a pin in `export_dir`: its
    manifest is gone while later versions exist (retention removed it, or it never was published).
    A version not published yet (nothing newer on disk) is allowed: the runtime waits for it."""
    present = sorted({v for p in Path(export_dir).glob("encoder-*.json") if (v := parse_version(p.name)) is not None})
    if version in present or not present or max(present) < version:
        return
    listing = f"{present[0]}-{present[-1]}" if len(present) > 3 else ", ".join(map(str, present))
    raise ModelFileError(
        f"cannot pin version {version}: it is not in {export_dir} (versions there: {listing}); refit the policy head "
        "on a version that is, and pin that one"
    )


def read_pins(export_dir: Path) -> set[int]:
    """Versions some runtime is pinned to (names under pins/; anything else there is ignored)."""
    try:
        names = [p.name for p in (Path(export_dir) / PINS_DIR).iterdir()]
    except OSError:
        return set()
    return {int(m.group(1)) for n in names if (m := _PIN_RE.match(n))}


# --------------------------------------------------------------------------- calibration


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
    log.info("calibration set of %d frames written to %s%s", len(chosen), path,
             "" if stored is None else f" (grown from {len(stored)})")
    return chosen


def embed_file(model_path: Path, spec: InputSpec, output_name: str, frames: np.ndarray, batch: int = 64) -> np.ndarray:
    """Embeddings (N, D) float32 of uint8 frames by the ONNX file at `model_path`, prepared as serving does."""
    session = create_session(model_path, [CPU], threads=1)
    out = [session.run([output_name], {spec.name: spec.prepare(frames[i : i + batch])})[0] for i in range(0, len(frames), batch)]
    return np.concatenate(out).astype(np.float32)


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


def _gate(fit: CompatFit, target: int, cfg: ExportConfig, pinned: bool) -> None:
    """The drift gate: ExportRefused (one line) when the map's held-out R² is below `cfg.min_compatibility`,
    measured on at least MIN_GATE_HOLDOUT frames (a young calibration set only records its R²: on a dozen
    held-out frames even a good map can score low)."""
    if cfg.min_compatibility is None or fit.r2 >= cfg.min_compatibility:
        return
    if fit.holdout_frames < MIN_GATE_HOLDOUT:
        log.warning("map to version %d: R² %.3f on only %d held-out calibration frames; the drift gate waits for %d",
                    target, fit.r2, fit.holdout_frames, MIN_GATE_HOLDOUT)
        return
    what = f"pinned version {target}" if pinned else f"version {target}"
    advice = "refit the policy head on the newest version and repin"
    if pinned:
        advice += f" (or delete {PINS_DIR}/encoder-{target:06d}.pin if no runtime uses that pin any more)"
    raise ExportRefused(
        f"drift gate: a {fit.method} map back to {what} explains R² = {fit.r2:.3f} of its embeddings "
        f"on {fit.holdout_frames} held-out calibration frames (CKA {fit.cka:.3f}) < export.min_compatibility "
        f"{cfg.min_compatibility:g}; {advice}, or lower the threshold"
    )


def fit_for_export(
    model_path: Path, spec: InputSpec, output_name: str, export_dir: Path, frames: Optional[np.ndarray], cfg: ExportConfig
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
        _gate(fit, manifest.version, cfg, pinned)
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
