"""Export gate on downstream usefulness: publish only if a frozen-feature probe does not regress.

Parity and collapse checks say the file is faithful and not degenerate; they cannot say the new
encoder is *better*. With `export.probe_gate` set, each candidate is scored (kNN and linear probe,
the evaluation's fixed split and seed, so scores are comparable) and compared with the score
stored in the manifest of the version now published.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from agent.core.config import EvalConfig, ExportConfig
from agent.core.errors import ConfigError, ExportRefused, ModelFileError
from export.manifest import read_latest, read_manifest

log = logging.getLogger(__name__)


def _published_eval(export_dir: Path) -> Optional[dict[str, Any]]:
    try:
        name = read_latest(export_dir)
        return read_manifest(export_dir / name).raw.get("eval") if name else None
    except ModelFileError:
        return None


def probe_gate(
    onnx_path: Path, export_dir: Path, export_cfg: ExportConfig, eval_cfg: EvalConfig = EvalConfig()
) -> dict[str, Any]:
    """Score the candidate ONNX file with the user's `eval` section (k, split, image cap); raise
    ExportRefused if it fell below the published version.

    Returns the score to store in the new manifest under "eval".
    """
    from export.evaluate import evaluate_export  # sklearn loads only when gating
    from trainer.feature_probes import EvalResult, probe_regressed

    data = export_cfg.probe_gate
    assert data is not None, "called only when export.probe_gate names a labelled set (export/exporter.py)"
    result = evaluate_export(onnx_path, data, eval_cfg, reference=False)
    previous_row = _published_eval(export_dir)
    previous = EvalResult.from_dict(previous_row) if previous_row else None
    try:
        regressed = previous is not None and probe_regressed(result, previous, export_cfg.probe_tolerance)
    except ConfigError as exc:  # the eval settings changed since the published score: this one is the new baseline
        log.warning("probe gate: %s; taking this score as the new baseline", exc)
        regressed = False
    if regressed and previous is not None:  # regressed implies a previous score
        raise ExportRefused(
            f"probe on {result.data} regressed: kNN {result.knn_top1:.3f} (published {previous.knn_top1:.3f}), "
            f"linear {result.linear_top1:.3f} (published {previous.linear_top1:.3f})"
        )
    row = result.to_event()
    row["encoder"] = "this version"  # the temp file's name means nothing once published
    return row
