"""The served model: the encoder as ONNX with uint8 input, verified against torch on real frames
(export/onnx_export.py, export/verify.py). Always written; its fields are the manifest's top level."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import torch

from agent.core.config import ExportConfig, ModelConfig
from export.manifest import MODEL_SUFFIX, InputSpec
from export.onnx_export import OUTPUT_NAME, Exported, PreprocessedEncoder, export_onnx
from export.targets.base import ExportJob, ExportTarget
from export.verify import Verification, verify_onnx


def manifest_fields(
    step: int,
    spec: InputSpec,
    exported: Exported,
    verification: Verification,
    export_cfg: ExportConfig,
    model_cfg: ModelConfig,
) -> dict[str, Any]:
    """Everything about an export except what the publisher fixes (version, file, hash, time)."""
    return {
        "step": int(step),
        "weights": export_cfg.weights,
        "input": spec.to_json(),
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "dim": exported.output_dim},
        "model": {
            "encoder": model_cfg.encoder,
            "encoder_kwargs": model_cfg.encoder_kwargs,
            "stem": model_cfg.stem,
            "hidden_layer": model_cfg.hidden_layer,
            "image_size": model_cfg.image_size,
        },
        "verification": {
            "parity_max_abs": verification.parity_max_abs,
            "parity_atol": export_cfg.parity_atol,
            "batch_sizes": list(verification.batch_sizes),
            "collapse_std": verification.collapse_std,
            "collapse_std_min": export_cfg.collapse_std_min,
        },
        "exporter": export_cfg.exporter,
        "opset": exported.opset,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__},
    }


class OnnxModel(ExportTarget):
    """`encoder-NNNNNN.onnx`: what `HotEncoder` serves. ExportRefused when the parity or collapse check fails."""

    name = "onnx"
    suffix = MODEL_SUFFIX

    def wanted(self, export_cfg: ExportConfig) -> bool:
        return True  # a version is what a runtime can serve

    def write(self, job: ExportJob, path: Path) -> dict[str, Any]:
        spec = job.spec
        wrapped = PreprocessedEncoder(job.encoder, spec.mean, spec.std, job.export_cfg.input_format)
        exported = export_onnx(wrapped, spec, path, job.export_cfg, job.beside_training)
        verification = verify_onnx(path, job.encoder, job.frames, spec, job.export_cfg)
        return manifest_fields(job.step, spec, exported, verification, job.export_cfg, job.model_cfg)
