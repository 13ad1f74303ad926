"""The export targets: what each published version holds besides its manifest (export/targets/base.py).

A new kind of file is one module with an `ExportTarget` and one entry in `TARGETS`; `export_encoder`
writes every wanted target, the publisher hashes, retains and removes their files with their version.
"""

from __future__ import annotations

from agent.core.config import ExportConfig
from export.targets.base import ExportJob, ExportTarget
from export.targets.onnx_model import OnnxModel
from export.targets.torch_weights import TorchWeights

MODEL_TARGET = "onnx"  # the served model: written first, verified and gated, its fields the manifest's top level
TARGETS: dict[str, ExportTarget] = {target.name: target for target in (OnnxModel(), TorchWeights())}

__all__ = ["MODEL_TARGET", "TARGETS", "ExportJob", "ExportTarget", "wanted_targets"]


def wanted_targets(export_cfg: ExportConfig) -> list[ExportTarget]:
    """The targets this export writes, the model first (a refused model leaves the others unwritten)."""
    return [TARGETS[MODEL_TARGET]] + [t for name, t in TARGETS.items() if name != MODEL_TARGET and t.wanted(export_cfg)]
