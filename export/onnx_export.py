"""Encoder → ONNX file that takes what a robot has: uint8 frames, N×H×W×C, normalised in the graph.

C is the encoder's channel count, read off the normalisation statistics (3 values: RGB; 1: gray,
a mono encoder); H×W is `model.image_size` (one side or a height-width pair).

The wrapped graph is what gets verified and served, so a policy never re-implements the training
normalisation (a classic source of silent train/serve skew). A float NCHW input is an option for
callers that already normalise. The batch axis is dynamic; the example batch is never 1, which
the TorchScript tracer could bake in.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import onnx
import torch
from torch import nn

from agent.core.config import CaptureConfig, ExportConfig
from agent.core.errors import ExportRefused, StorageError
from export.manifest import CHANNEL_ORDERS, InputSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OUTPUT_NAME = "embedding"
_INPUT_NAMES = {"uint8_nhwc": "frames", "float_nchw": "images"}


class PreprocessedEncoder(nn.Module):
    """The encoder with its input preparation folded in, flattened to (N, D) float32 output."""

    def __init__(self, encoder: nn.Module, mean: Sequence[float], std: Sequence[float], input_format: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.uint8_input = input_format == "uint8_nhwc"
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        # (x/255 - mean)/std folded into one multiply-add.
        self.register_buffer("scale", 1.0 / (255.0 * std_t), persistent=False)
        self.register_buffer("shift", -mean_t / std_t, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uint8_input:
            x = x.permute(0, 3, 1, 2).float() * self.scale + self.shift
        return self.encoder(x).flatten(1).float()


def input_spec(
    input_format: str,
    image_size: Union[int, tuple[int, int]],
    mean: Sequence[float],
    std: Sequence[float],
    capture: Optional[CaptureConfig] = None,
) -> InputSpec:
    """The manifest's description of the graph input for this export format; `capture` (the config the
    training frames were stored with) makes serving fit camera frames the same way.

    `image_size` is one side or (height, width) in px; the channel count is `len(mean)` (3 or 1).
    Raises ExportRefused for statistics of another length, or mean and std of different lengths.
    """
    uint8 = input_format == "uint8_nhwc"
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    channels = len(mean)
    if channels not in CHANNEL_ORDERS or len(std) != channels:
        raise ExportRefused(f"an export takes 3 (RGB) or 1 (gray) channels; got mean {tuple(mean)} and std {tuple(std)}")
    return InputSpec(
        name=_INPUT_NAMES[input_format],
        dtype="uint8" if uint8 else "float32",
        layout="NHWC" if uint8 else "NCHW",
        height=int(height),
        width=int(width),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        channel_order=CHANNEL_ORDERS[channels],
        stored=None if capture is None else (capture.height, capture.width, capture.resize),
        channels=channels,
    )


def example_batch(cfg: ExportConfig) -> int:
    """Batch size of the export example: 2, or 3 when verification runs at 2, so parity always checks another size."""
    return 3 if cfg.verify_batch == 2 else 2


@dataclass(frozen=True)
class Exported:
    output_dim: int
    opset: int  # as written in the file (the dynamo exporter writes at least 18)


def _exporter_args(spec: InputSpec, cfg: ExportConfig) -> dict[str, Any]:
    names = {"input_names": [spec.name], "output_names": [OUTPUT_NAME]}
    if cfg.exporter == "torchscript":
        dynamic_axes = {spec.name: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
        return {**names, "dynamo": False, "dynamic_axes": dynamic_axes, "opset_version": cfg.opset}
    return {
        **names,
        "dynamo": True,
        "dynamic_shapes": ({0: torch.export.Dim("batch", min=1, max=4096)},),
        # Its lowest implemented opset is 18; asking for less only adds a failing down-conversion.
        "opset_version": max(cfg.opset, 18),
        "external_data": False,
        "verbose": False,
    }


def export_onnx(wrapped: PreprocessedEncoder, spec: InputSpec, path: Path, cfg: ExportConfig) -> Exported:
    """Export `wrapped` (eval mode, dynamic batch) to `path`.

    Raises ExportRefused when the exporter cannot handle the module, so the caller keeps the last
    good version; StorageError when the file cannot be written (a full disk is not a refusal).
    """
    wrapped.eval()
    batch = example_batch(cfg)
    if spec.dtype == "uint8":
        example = torch.randint(0, 256, spec.shape(batch), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    else:
        example = torch.randn(spec.shape(batch), generator=torch.Generator().manual_seed(0))
    graph = io.BytesIO()  # in memory first: a full disk must not look like an exporter failure
    try:
        with torch.no_grad():
            out = wrapped(example)
            if out.ndim != 2 or out.shape[0] != batch:
                raise ExportRefused(f"encoder output has shape {tuple(out.shape)}, expected (N, D)")
            torch.onnx.export(wrapped, (example,), graph, **_exporter_args(spec, cfg))
    except ExportRefused:
        raise
    except Exception as exc:  # the encoder and the exporters raise many unrelated types
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise ExportRefused(f"{cfg.exporter} ONNX export failed: {first[:300]}") from exc
    try:
        with open(path, "wb") as f:
            f.write(graph.getbuffer())
    except OSError as exc:
        raise StorageError(f"cannot write the ONNX export to {path.parent}: {exc.strerror or exc}") from None
    opset = next(o.version for o in onnx.load(str(path), load_external_data=False).opset_import if o.domain in ("", "ai.onnx"))
    return Exported(output_dim=int(out.shape[1]), opset=int(opset))
