"""Former home of backward-compatible embeddings, kept so existing `export.compat` imports still work.

New code imports from the modules that hold each job: `export.embedding_maps` (maps and fitting),
`export.map_files` (map files, composing), `export.pins` (pinned versions), `export.calibration`
(calibration set), `export.drift_gate` (gate and drift figures), `export.fit_maps` (fitting at export).
"""

from export.calibration import CALIBRATION_NAME, calibration_set, embed_file
from export.drift_gate import MIN_GATE_HOLDOUT, drift_gate, drift_record
from export.embedding_maps import (
    HOLDOUT_EVERY,
    METHODS,
    MIN_CALIBRATION_FRAMES,
    CompatFit,
    LinearMap,
    fit_compat,
    fit_method,
    fit_procrustes,
    fit_ridge,
    linear_cka,
    r2_score,
)
from export.fit_maps import fit_for_export, previous_version
from export.map_files import chain_of, compose_to, direct_targets, map_bytes, map_filename, read_direct_map, read_map
from export.pins import PINS_DIR, check_pinnable, pin_path, read_pins, write_pin

__all__ = [
    "CALIBRATION_NAME", "HOLDOUT_EVERY", "METHODS", "MIN_CALIBRATION_FRAMES", "MIN_GATE_HOLDOUT", "PINS_DIR",
    "CompatFit", "LinearMap", "calibration_set", "chain_of", "check_pinnable", "compose_to", "direct_targets",
    "drift_gate", "drift_record", "embed_file", "fit_compat", "fit_for_export", "fit_method", "fit_procrustes",
    "fit_ridge", "linear_cka", "map_bytes", "map_filename", "pin_path", "previous_version", "r2_score",
    "read_direct_map", "read_map", "read_pins", "write_pin",
]
