"""`encoder-NNNNNN.pt` (`export.torch_weights: true`): the encoder's `state_dict` in the wrapped network's own
key names, for policies that build the network in PyTorch (torchvision's `resnet18()` and LeRobot's backbones
load it; README "Using the improved network in PyTorch").

Only what the embedding depends on is saved: the layers after the hidden layer (a ResNet's `fc` for
`avgpool`) never ran and were never trained, so `load_state_dict(strict=False)` reports just those as
missing. Plain tensors saved with `torch.save`, so `torch.load(path, weights_only=True)` reads it
without running code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from agent.core.config import ExportConfig
from agent.core.errors import ExportRefused
from export.targets.base import ExportJob, ExportTarget
from trainer.backbone import Backbone, used_state_keys


class TorchWeights(ExportTarget):
    name = "torch_weights"
    suffix = ".pt"

    def wanted(self, export_cfg: ExportConfig) -> bool:
        return export_cfg.torch_weights

    def write(self, job: ExportJob, path: Path) -> dict[str, Any]:
        encoder = job.encoder
        if not isinstance(encoder, Backbone):
            raise ExportRefused(
                "export.torch_weights needs the trainer's encoder (a network cut at its hidden layer); got "
                f"{type(encoder).__name__}"
            )
        used = used_state_keys(encoder, (job.spec.height, job.spec.width), job.spec.channels)
        full = encoder.net.state_dict()
        state = {key: value.detach().cpu().contiguous().clone() for key, value in full.items() if key in used}
        torch.save(state, path)
        return {
            "format": "torch.save of a state_dict; torch.load(path, weights_only=True)",
            "network": job.model_cfg.encoder,
            "stem": job.model_cfg.stem,
            "hidden_layer": job.model_cfg.hidden_layer,
            "tensors": len(state),
            "left_out": sorted(set(full) - used),
        }
