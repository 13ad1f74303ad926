"""What an export target is: one kind of file each published version can carry (`ExportTarget`).

A target is told what was trained (`ExportJob`: the encoder, real frames, the input spec and the config
sections) and writes its one file to a temp path the publisher then moves to `encoder-NNNNNN<suffix>`;
it returns the manifest fields that describe that file. The model target (ONNX, the file a runtime
serves) is the one whose fields form the manifest's top level and whose file is verified and gated;
every other target's file is listed under the manifest's "artifacts" with its sha256.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from agent.core.config import ExportConfig, ModelConfig
from export.manifest import InputSpec


@dataclass(frozen=True)
class ExportJob:
    """One export: `encoder` maps normalised float NCHW images to (N, D) (a `trainer.backbone.Backbone` for
    encoders the trainer built); `frames` are real uint8 NHWC frames to verify on; `spec` is the graph's input."""

    step: int
    encoder: nn.Module
    frames: np.ndarray
    spec: InputSpec
    export_cfg: ExportConfig
    model_cfg: ModelConfig
    beside_training: bool = False  # training runs in this process: a dynamo trace goes to a child (export/isolated.py)


class ExportTarget(ABC):
    """One kind of published file. Register an instance in export/targets/__init__.py (`TARGETS`)."""

    name: str  # key in the manifest's "artifacts" and in TARGETS
    suffix: str  # the published file is encoder-NNNNNN<suffix>

    @abstractmethod
    def wanted(self, export_cfg: ExportConfig) -> bool:
        """Whether this export writes the target's file (its `export` config switch)."""

    @abstractmethod
    def write(self, job: ExportJob, path: Path) -> dict[str, Any]:
        """Write the file to `path`; return the manifest fields describing it. ExportRefused (a ByolAgentError)
        when the encoder cannot be written or fails this target's checks: nothing is published then."""
