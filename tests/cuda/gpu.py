"""What the CUDA-only tests need to know about the machine, and their skip marks (one reason each)."""

from __future__ import annotations

import pytest
import torch

from agent.core.errors import ConfigError
from export.sessions import resolve_providers

CUDA = torch.cuda.is_available()
DEVICES = torch.cuda.device_count() if CUDA else 0

needs_cuda = pytest.mark.skipif(
    not CUDA,
    reason=f"CUDA is not available (torch {torch.__version__}, built for CUDA {torch.version.cuda}, sees no device)",
)


def ort_providers_or_skip(choice: str) -> list[str]:
    """onnxruntime's providers for `choice` ("cuda" | "tensorrt"), or skip saying why they cannot run here."""
    try:
        return resolve_providers(choice)
    except ConfigError as exc:
        pytest.skip(str(exc))
