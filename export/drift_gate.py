"""The drift gate (refuse an export whose map back to an older version explains too little) and the drift
figures a version's manifest records, as metrics and status lines read them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from agent.core.config import ExportConfig
from agent.core.errors import ExportRefused, ModelFileError
from export.embedding_maps import CompatFit
from export.manifest import manifest_filename, read_manifest
from export.pins import PINS_DIR, read_pins

log = logging.getLogger(__name__)

MIN_GATE_HOLDOUT = 32  # the drift gate refuses only on an R² measured on at least this many held-out frames


def drift_gate(fit: CompatFit, target: int, cfg: ExportConfig, pinned: bool) -> None:
    """The drift gate: ExportRefused (one line) when the map's held-out R² is below `cfg.min_compatibility`,
    measured on at least MIN_GATE_HOLDOUT frames (a young calibration set only records its R²: on a dozen
    held-out frames even a good map can score low)."""
    if cfg.min_compatibility is None or fit.r2 >= cfg.min_compatibility:
        return
    if fit.holdout_frames < MIN_GATE_HOLDOUT:
        log.warning(
            "map to version %d: R² %.3f on only %d held-out calibration frames; the drift gate waits for %d",
            target,
            fit.r2,
            fit.holdout_frames,
            MIN_GATE_HOLDOUT,
        )
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
    listed = compat.get("direct")
    direct = listed if isinstance(listed, list) else []
    pinned = {
        str(d["maps_to"]): d.get("cka") for d in direct if isinstance(d, dict) and isinstance(d.get("maps_to"), int)
    }
    if compat["maps_to"] in read_pins(export_dir):
        pinned[str(compat["maps_to"])] = compat.get("cka")
    return {"r2": compat.get("r2"), "cka_prev": compat.get("cka"), "cka_pinned": pinned}
