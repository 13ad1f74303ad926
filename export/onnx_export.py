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
import re
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import onnx
import torch
from torch import nn

from agent.core.config import DYNAMO_MIN_OPSET, CaptureConfig, ExportConfig, ModelConfig
from agent.core.errors import ConfigError, ExportRefused, ModelFileError, StorageError
from export.manifest import CHANNEL_ORDERS, InputSpec
from trainer.normalise import folded_scale_shift, normalise, to_unit_nchw

OUTPUT_NAME = "embedding"
_INPUT_NAMES = {"uint8_nhwc": "frames", "float_nchw": "images"}


class PreprocessedEncoder(nn.Module):
    """The encoder with its input preparation folded in, flattened to (N, D) float32 output."""

    scale: torch.Tensor  # registered buffers: (1, C, 1, 1) float32
    shift: torch.Tensor

    def __init__(self, encoder: nn.Module, mean: Sequence[float], std: Sequence[float], input_format: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.uint8_input = input_format == "uint8_nhwc"
        scale, shift = folded_scale_shift(mean, std)  # (x/255 - mean)/std folded into one multiply-add
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)

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
        raise ExportRefused(
            f"an export takes 3 (RGB) or 1 (gray) channels; got mean {tuple(mean)} and std {tuple(std)}"
        )
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
    opset: int  # as written in the file: `opset_of(cfg)`


DEFAULT_OPSET = {"torchscript": 17, "dynamo": DYNAMO_MIN_OPSET}


def opset_of(cfg: ExportConfig) -> int:
    """The opset an export with `cfg` writes: `export.opset`, else the exporter's own (DEFAULT_OPSET).

    The config refuses an opset below 18 for the dynamo exporter: it implements 18 and up, and
    torch's conversion down (`opset_version=17`) fails even on a plain conv net, leaving 18 in the file.
    """
    return cfg.opset if cfg.opset is not None else DEFAULT_OPSET[cfg.exporter]


def _exporter_args(spec: InputSpec, cfg: ExportConfig) -> dict[str, Any]:
    names = {"input_names": [spec.name], "output_names": [OUTPUT_NAME]}
    if cfg.exporter == "torchscript":
        dynamic_axes = {spec.name: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
        return {**names, "dynamo": False, "dynamic_axes": dynamic_axes, "opset_version": opset_of(cfg)}
    return {
        **names,
        "dynamo": True,
        "dynamic_shapes": ({0: torch.export.Dim("batch", min=1, max=4096)},),
        "opset_version": opset_of(cfg),
        "external_data": False,
        "verbose": False,
    }


# Exporters whose tracing state is process-global (torch.export's): beside training they run in a child process.
CHILD_EXPORTERS = frozenset({"dynamo"})


def export_graph(
    wrapped: PreprocessedEncoder, spec: InputSpec, cfg: ExportConfig, beside_training: bool = False
) -> tuple[bytes, int]:
    """The ONNX file of `wrapped` (eval mode, dynamic batch) as bytes, and the embedding width D.

    `beside_training`: training runs in this process meanwhile, so an exporter of CHILD_EXPORTERS
    runs in a spawned child (export/isolated.py), never sharing its tracing state with the training
    thread. Raises ExportRefused naming the exporter and its reason (one line) when it cannot
    handle the module (or, in a child, cannot pickle it, or the child dies or hangs).
    """
    if beside_training and cfg.exporter in CHILD_EXPORTERS:
        from export.isolated import export_in_child

        return export_in_child(trace_graph, wrapped, spec, cfg)
    return trace_graph(wrapped, spec, cfg)


def trace_graph(wrapped: nn.Module, spec: InputSpec, cfg: ExportConfig) -> tuple[bytes, int]:
    """`export_graph` in this process: the configured exporter's trace of `wrapped` into memory."""
    wrapped.eval()
    batch = example_batch(cfg)
    if spec.dtype == "uint8":
        example = torch.randint(
            0, 256, spec.shape(batch), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
        )
    else:
        example = torch.randn(spec.shape(batch), generator=torch.Generator().manual_seed(0))
    graph = io.BytesIO()  # in memory first: a full disk must not look like an exporter failure
    try:
        with torch.no_grad(), _attention_fast_path(False):
            out = wrapped(example)
            if out.ndim != 2 or out.shape[0] != batch:
                raise ExportRefused(f"encoder output has shape {tuple(out.shape)}, expected (N, D)")
            # the exporters write to a file object too (in memory here); torch's annotation names only paths
            torch.onnx.export(wrapped, (example,), graph, **_exporter_args(spec, cfg))  # type: ignore[arg-type]
    except ExportRefused:
        raise
    except Exception as exc:  # the encoder and the exporters raise many unrelated types
        raise ExportRefused(f"{cfg.exporter} ONNX export failed: {_reason(exc)}") from exc
    return graph.getvalue(), int(out.shape[1])


def export_onnx(
    wrapped: PreprocessedEncoder, spec: InputSpec, path: Path, cfg: ExportConfig, beside_training: bool = False
) -> Exported:
    """Export `wrapped` (eval mode, dynamic batch) to `path` (`beside_training` as in `export_graph`).

    Raises ExportRefused when the exporter cannot handle the module, so the caller keeps the last
    good version; StorageError when the file cannot be written (a full disk is not a refusal).
    """
    graph, output_dim = export_graph(wrapped, spec, cfg, beside_training)
    try:
        with open(path, "wb") as f:
            f.write(graph)
    except OSError as exc:
        raise StorageError(f"cannot write the ONNX export to {path.parent}: {exc.strerror or exc}") from None
    opset = next(
        o.version for o in onnx.load(str(path), load_external_data=False).opset_import if o.domain in ("", "ai.onnx")
    )
    if opset != opset_of(cfg):  # the exporter may fall back to another opset with only a log line
        raise ExportRefused(
            f"{cfg.exporter} exporter wrote opset {opset}, not the configured {opset_of(cfg)} (export.opset)"
        )
    return Exported(output_dim=output_dim, opset=int(opset))


def check_exportable(model_cfg: ModelConfig, export_cfg: ExportConfig, channels: int = 3) -> None:
    """Refuse, before any training, an encoder that `export_cfg.exporter` cannot export.

    Builds `model_cfg`'s encoder untrained (its own RNG: the global one is left alone), cuts it at
    the hidden layer as the learner does and exports it into memory with the configured exporter
    and input format. What can be exported depends on the architecture, the hidden layer and the
    image size, not on the weights, so this is the export every later version will take (e.g. the
    TorchScript exporter cannot write AlexNet at 64 px: its adaptive pooling to 6x6 does not divide
    the 1x1 map it gets there). Costs one export, measured with TorchScript on a loaded 2-core
    machine: 0.3 s for the default tiny_cnn, 5 s for configs/robot-resnet18.yaml, plus ~2 s of
    torch.onnx imports on first use; the dynamo exporter takes 4-30 s per encoder. Raises ConfigError (one line, naming
    encoder, hidden layer,
    image size and exporter) when the export fails or its graph computes something else than the
    encoder (`check_graph_parity`: an export that runs is not yet a right one), or naming encoder and
    size when the encoder cannot even run at that size; ConfigError from the encoder registry as it is.
    """
    from trainer.backbone import Backbone  # the learner's modules load only for this check
    from trainer.byol import view_statistics
    from trainer.encoders import build_encoder

    size, (height, width) = model_cfg.image_size, model_cfg.image_hw
    mean, std = view_statistics(channels, normalize=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        backbone = Backbone(build_encoder(model_cfg, channels), model_cfg.hidden_layer).eval()
        try:  # a net that cannot even run at this size is no exporter's fault: say so
            with torch.no_grad():
                backbone(torch.rand(2, channels, height, width))
        except Exception as exc:  # the encoder may raise anything
            raise ConfigError(
                f"model.encoder={model_cfg.encoder!r} (hidden_layer {model_cfg.hidden_layer!r}) fails on a "
                f"{height}x{width} input ({channels} channel(s)): {_reason(exc)}; change model.image_size or "
                "model.encoder"
            ) from None
    spec = input_spec(export_cfg.input_format, size, mean, std)
    try:
        wrapped = PreprocessedEncoder(backbone, mean, std, export_cfg.input_format)
        graph, _ = export_graph(wrapped, spec, export_cfg, beside_training=True)  # as every version will be
        check_graph_parity(graph, wrapped, spec, export_cfg)
    except ExportRefused as exc:
        other = "dynamo" if export_cfg.exporter == "torchscript" else "torchscript"
        raise ConfigError(
            f"model.encoder={model_cfg.encoder!r} (hidden_layer {model_cfg.hidden_layer!r}, image_size "
            f"{size}) cannot be exported with export.exporter={export_cfg.exporter}, so no version "
            f"would ever be published: {exc}; try export.exporter={other} or another model.image_size"
        ) from None


def parity_frames(spec: InputSpec, batch: int) -> torch.Tensor:
    """`batch` inputs for `spec` (uint8 NHWC or float NCHW): noise of another seed than the export
    example, then alternately a dark and a bright ramp, so a branch the tracer baked in shows."""
    height, width, channels = spec.height, spec.width, spec.channels
    noise = torch.randint(0, 256, (batch, height, width, channels), generator=torch.Generator().manual_seed(1))
    ramp = torch.linspace(0, 1, width).view(1, width, 1).expand(height, width, channels)
    for i in range(1, batch):
        noise[i] = (ramp * 40).round().to(noise.dtype) if i % 2 else (215 + ramp * 40).round().to(noise.dtype)
    frames = noise.to(torch.uint8)
    if spec.dtype == "uint8":
        return frames
    return normalise(to_unit_nchw(frames), spec.mean, spec.std)


def check_graph_parity(graph: bytes, wrapped: PreprocessedEncoder, spec: InputSpec, cfg: ExportConfig) -> float:
    """Max |onnxruntime - torch| of the ONNX `graph` against `wrapped`, on `parity_frames` at batch `cfg.verify_batch`.

    Relative to the embedding's scale (at least 1): a random-init net's embeddings may be tiny or
    huge. Raises ExportRefused ("parity failure: ...", one line) above `cfg.parity_atol`, or when
    onnxruntime cannot run the graph.
    """
    from export.sessions import CPU, create_session  # onnxruntime loads only for this check

    frames = parity_frames(spec, cfg.verify_batch)
    batches = [frames] + [frames[i : i + 1] for i in range(len(frames))]  # the whole batch, then each frame alone
    worst, scale = 0.0, 1.0
    with tempfile.TemporaryDirectory(prefix="byol-agent-check-") as folder:
        path = Path(folder) / "check.onnx"
        path.write_bytes(graph)
        try:
            session = create_session(path, [CPU], threads=1)
        except ModelFileError as exc:
            raise ExportRefused(str(exc)) from None
        for x in batches:
            with torch.no_grad():
                expected = wrapped.eval()(x).numpy()
            try:
                got = session.run(None, {spec.name: x.numpy()})[0]
            except Exception as exc:  # onnxruntime raises its own pybind types
                raise ExportRefused(f"onnxruntime cannot run the export at batch {len(x)}: {_reason(exc)}") from None
            scale = max(scale, float(abs(expected).max()))
            worst = max(worst, float(abs(got - expected).max()) if got.shape == expected.shape else float("inf"))
    if not worst <= cfg.parity_atol * scale:
        raise ExportRefused(
            f"parity failure: max |onnx - torch| = {worst:.3g} > export.parity_atol {cfg.parity_atol:g} "
            f"x embedding scale {scale:.3g} on {len(frames)} check frames, together and one by one"
        )
    return worst


_FAST_PATH_LOCK = threading.Lock()


@contextmanager
def _attention_fast_path(enabled: bool) -> Iterator[None]:
    """`torch.backends.mha` fast path switched for the block, then restored.

    In eval mode without grad, `nn.MultiheadAttention` (so torchvision's ViT encoder blocks) runs
    the fused `aten::_native_multi_head_attention`, which the TorchScript exporter cannot write (the
    dynamo exporter decomposes it); with the fast path off the same weights take the composite path
    (matmuls and softmax), so both exporters write the same graph.
    The switch is process-wide and export runs beside training on another thread: training takes
    the composite path anyway (training mode), so only another eval forward in the block is slowed.
    """
    with _FAST_PATH_LOCK:
        before = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(enabled)
        try:
            yield
        finally:
            torch.backends.mha.set_fastpath_enabled(before)


_SUMMARY = re.compile(r"^## Exception summary\s*\n\s*\n?(.+)$", re.MULTILINE)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _reason(exc: BaseException) -> str:
    """One line saying why an exporter failed: the dynamo exporter's own first line is a generic banner
    ("Failed to export the model with torch.export. This is step 1/3 ..."), its cause sits in the
    "## Exception summary" section of the message."""
    text = _ANSI.sub("", str(exc)).strip()
    summary = _SUMMARY.search(text)
    first = summary.group(1) if summary else (text.splitlines() or [exc.__class__.__name__])[0]
    return first.strip()[:300]
