"""The gate between an exported file and the robot: checker, onnxruntime-vs-torch parity, collapse.

Parity is measured on real frames from the replay buffer, prepared by the same `InputSpec.prepare`
the runtime uses, at batch sizes other than the export example (the configured `verify_batch` and
the robot's batch 1), against the *unwrapped* torch encoder fed with the training normalisation
written out independently, so a mistake in the in-graph preprocessing cannot hide. A collapsed
encoder (all frames mapped to one point) passes parity, so it is gated separately.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from agent.core.config import ExportConfig
from agent.core.errors import ExportRefused, ModelFileError
from agent.core.frames import as_frame_batch
from export.manifest import InputSpec
from export.sessions import CPU, create_session
from trainer.normalise import normalise, to_unit_nchw


@dataclass(frozen=True)
class Verification:
    """What the gate measured; recorded in the manifest."""

    parity_max_abs: float
    collapse_std: float
    batch_sizes: tuple[int, ...]


def collapse_std(embeddings: np.ndarray) -> float:
    """Std over the batch of the l2-normalised embeddings, averaged over dims: ≈1/√D healthy, → 0 collapsed."""
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    unit = embeddings / np.maximum(norms, 1e-12)
    return float(unit.std(axis=0).mean())


def torch_reference(encoder: nn.Module, frames: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The encoder as trained: uint8 NHWC (C = the spec's channels) → float/255 → (x - mean)/std → NCHW, output
    flattened."""
    x = to_unit_nchw(torch.from_numpy(np.ascontiguousarray(frames)))
    with torch.no_grad():
        return encoder.eval()(normalise(x, spec.mean, spec.std)).flatten(1).float().numpy()


def pick_frames(frames: np.ndarray, n: int) -> np.ndarray:
    """`n` frames spread evenly over the given ones (buffer order is temporal; spreading avoids near-duplicates)."""
    index = np.linspace(0, len(frames) - 1, num=n).round().astype(int)
    return frames[index]


def distinct_frames(frames: np.ndarray) -> np.ndarray:
    """The frames with exact repeats left out, first occurrences in their order. A small replay buffer is sampled
    with replacement, and n copies of one frame have embedding std 0 whatever the encoder."""
    _, first = np.unique(frames.reshape(len(frames), -1), axis=0, return_index=True)
    return frames[np.sort(first)]


def verify_onnx(path: Path, encoder: nn.Module, frames: np.ndarray, spec: InputSpec, cfg: ExportConfig) -> Verification:
    """Check the ONNX file at `path`; raise ExportRefused naming the failed check and its numbers."""
    frames = as_frame_batch(frames)
    if len(frames) < 2:
        raise ExportRefused(f"verification needs at least 2 real frames, got {len(frames)}")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportRefused(f"onnx checker rejected the export: {_first_line(exc)}") from None
    try:  # one thread: verification runs beside training, keep off its cores
        session = create_session(path, [CPU], threads=1)
    except ModelFileError as exc:
        raise ExportRefused(_first_line(exc)) from None
    graph_input = session.get_inputs()[0]
    if graph_input.name != spec.name or graph_input.type != spec.onnx_type:
        raise ExportRefused(
            f"graph input is {graph_input.name}:{graph_input.type}, expected {spec.name}:{spec.onnx_type}"
        )

    distinct = distinct_frames(frames)
    if len(distinct) < 2:
        raise ExportRefused(
            f"verification needs at least 2 distinct frames, got {len(distinct)} distinct of {len(frames)}"
        )
    fitted = spec.fit(pick_frames(distinct, cfg.verify_batch))  # exactly what serving will hand the graph
    prepared = spec.feed(fitted)
    expected = torch_reference(encoder, fitted, spec)
    worst = 0.0
    batches = (cfg.verify_batch, 1)
    for batch in batches:
        try:
            got = session.run(None, {spec.name: prepared[:batch]})[0]
        except Exception as exc:  # e.g. a batch size baked into the graph
            raise ExportRefused(f"onnxruntime failed at batch {batch}: {_first_line(exc)}") from None
        if got.shape != expected[:batch].shape:
            raise ExportRefused(f"onnx output shape {got.shape} at batch {batch}, torch gives {expected[:batch].shape}")
        if not np.isfinite(got).all():
            raise ExportRefused(f"onnx output has non-finite values at batch {batch}")
        worst = max(worst, float(np.abs(got - expected[:batch]).max()))
    if worst > cfg.parity_atol:
        raise ExportRefused(
            f"parity failure: max |onnx - torch| = {worst:.3g} > export.parity_atol {cfg.parity_atol:g} "
            f"at batch sizes {batches}"
        )
    spread = collapse_std(expected)
    if spread < cfg.collapse_std_min:
        raise ExportRefused(
            f"collapsed encoder: normalised embedding std {spread:.4f} < export.collapse_std_min "
            f"{cfg.collapse_std_min:g} over {len(expected)} frames"
        )
    return Verification(parity_max_abs=worst, collapse_std=spread, batch_sizes=batches)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:300]
