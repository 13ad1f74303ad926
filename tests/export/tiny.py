"""Tiny real encoders and real frames for the export and runtime tests (no mocks: real ONNX files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from agent.core.config import ExportConfig, ModelConfig
from agent.core.demo_scene import DemoScene
from export.exporter import export_encoder
from export.publish import Publisher

IMAGE_SIZE = 32


def tiny_encoder(seed: int, width: int = 16) -> nn.Module:
    """A few conv layers ending in global pooling: (N, 3, H, W) → (N, width, 1, 1), like a ResNet at avgpool."""
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, width, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        net[1].running_mean.copy_(torch.randn(8, generator=gen) * 0.1)
        net[1].running_var.copy_(torch.rand(8, generator=gen) + 0.5)
    return net.eval()


def scene_frames(n: int, size: int = 40, seed: int = 0) -> np.ndarray:
    """`n` uint8 RGB frames of the demo scene at `size` px (stored size ≠ model size, as in the buffer)."""
    scene = DemoScene(size, size, seed=seed)
    return np.stack([scene.render(0.37 * i) for i in range(n)])


def model_cfg(**overrides: Any) -> ModelConfig:
    return ModelConfig(image_size=IMAGE_SIZE, encoder="tiny", **overrides)


def publish_version(export_dir: Path, seed: int, step: int = 0, width: int = 16, keep: int = 50, **export: Any) -> int:
    """Export, verify and publish a tiny encoder; returns its version."""
    return export_encoder(
        step,
        tiny_encoder(seed, width),
        scene_frames(12),
        export_cfg=ExportConfig(keep=keep, **export),
        model_cfg=model_cfg(),
        publisher=Publisher(export_dir, keep),
    )


class BrightnessBranch(nn.Module):
    """Runs and exports, but Python control flow on the data: the TorchScript tracer bakes in the
    branch its example took, so the graph gives other numbers than the eager net on darker frames."""

    def __init__(self) -> None:
        super().__init__()
        self.bright, self.dark = tiny_encoder(4), tiny_encoder(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bright(x) if float(x.mean()) > -0.5 else self.dark(x)


def brightness_branch() -> nn.Module:
    """The `package.module:factory` form of `BrightnessBranch`."""
    return BrightnessBranch()
