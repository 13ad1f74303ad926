"""Export from a run directory's checkpoints: once (`byol-agent export`) or following them (`--watch`).

The architecture comes from the checkpoint's own config (the weights only fit that), the export
settings from the caller's config. Verification and calibration frames are the checkpoint's saved
replay buffer, or the sample of it each checkpoint carries (real frames from the robot); frames of
the built-in demo scene only for a checkpoint with neither (written before that sample existed).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from agent.core import cadence
from agent.core.atomic import write_status
from agent.core.backoff import backoff_s
from agent.core.config import CaptureConfig, Config, EvalConfig, ExportConfig, ModelConfig
from agent.core.demo_scene import DemoScene
from agent.core.errors import ByolAgentError, CheckpointError, ExportRefused, ModelFileError, StorageError
from export.drift_gate import drift_record
from export.exporter import export_encoder
from export.manifest import read_latest, read_manifest
from export.publish import Publisher
from export.verify import pick_frames
from trainer.checkpoint import list_checkpoints, load_latest_checkpoint, saved_buffer
from trainer.run_records import append_event

log = logging.getLogger(__name__)
VERIFY_FRAMES = 64
IO_BACKOFF_MAX_S = 60.0


@dataclass(frozen=True)
class CheckpointEncoder:
    """What a checkpoint yields for export."""

    step: int
    encoder: nn.Module
    model: ModelConfig
    capture: CaptureConfig
    mean: tuple[float, ...]
    std: tuple[float, ...]
    frames: Optional[np.ndarray]  # from the saved buffer or the checkpoint's sample of it (None: neither)


def load_checkpoint_encoder(
    run_dir: Path, weights: str, operator_model: Optional[ModelConfig] = None, n_frames: int = VERIFY_FRAMES
) -> CheckpointEncoder:
    """Rebuild the learner from the newest readable checkpoint and take its target/online encoder,
    with up to `n_frames` frames of its saved replay buffer (verification and calibration).

    The architecture comes from the checkpoint, but an encoder import string in it is honoured
    only when `operator_model` (this machine's config) names the same one (ModelFileError otherwise).
    """
    from trainer.encoders import check_file_model
    from trainer.learner_factory import build_learner  # the learner stack loads only when a checkpoint is used

    ckpt = load_latest_checkpoint(run_dir)
    if ckpt is None:
        raise CheckpointError(f"no readable checkpoint in {Path(run_dir) / 'checkpoints'}; train first")
    try:
        cfg = Config.model_validate(ckpt["config"])
        check_file_model(cfg.model, operator_model, f"checkpoint {ckpt['path']}")
        learner = build_learner(cfg.model, cfg.train, "cpu", channels=cfg.capture.channels)
        learner.load_state_dict(ckpt["learner"])
    except (ValueError, KeyError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]
        raise CheckpointError(f"checkpoint {ckpt.get('path', run_dir)} cannot rebuild its learner: {first}") from None
    return CheckpointEncoder(
        step=int(ckpt["step"]),
        encoder=learner.encoder_module(weights),
        model=cfg.model,
        capture=cfg.capture,
        mean=tuple(learner.mean),
        std=tuple(learner.std),
        frames=_buffer_frames(ckpt, n_frames),
    )


def _buffer_frames(ckpt: dict[str, Any], wanted: int) -> Optional[np.ndarray]:
    """Up to `wanted` frames of the checkpoint's saved replay buffer, or of the sample of it every
    checkpoint carries ("export_frames", trainer/run_state.py); None when it has neither."""
    buffer = saved_buffer(ckpt)  # its own, or rank 0's in a multi-rank checkpoint
    images = buffer.get("images") if isinstance(buffer, dict) else ckpt.get("export_frames")
    if (
        not isinstance(images, torch.Tensor)
        or images.dtype != torch.uint8
        or images.ndim != 4
        or int(images.shape[0]) < 2
    ):
        return None
    images = images.numpy()
    return pick_frames(images, min(wanted, len(images)))


def frames_wanted(export_cfg: ExportConfig) -> int:
    """Buffer frames an export asks for: enough to verify, and to draw the calibration set from."""
    return max(VERIFY_FRAMES, export_cfg.calibration_frames)


def demo_frames(capture: CaptureConfig, n: int = VERIFY_FRAMES) -> np.ndarray:
    """`n` frames of the demo scene at the stored size, spread over time so they differ (what the
    "demo" source yields at `capture.fps`, every fourth frame)."""
    scene = DemoScene(capture.height, capture.width, seed=0)
    return np.stack([scene.render(4 * i / capture.fps) for i in range(n)])


def export_checkpoint(
    run_dir: Path,
    publisher: Publisher,
    export_cfg: ExportConfig,
    operator_model: Optional[ModelConfig] = None,
    eval_cfg: EvalConfig = EvalConfig(),
) -> tuple[int, int]:
    """Export, verify and publish the newest checkpoint's encoder; returns (step, version).

    Raises CheckpointError when there is nothing to export, ExportRefused when a gate fails,
    ModelFileError when the checkpoint names an import string `operator_model` does not.
    """
    source = load_checkpoint_encoder(run_dir, export_cfg.weights, operator_model, frames_wanted(export_cfg))
    return source.step, export_loaded(source, publisher, export_cfg, eval_cfg)


def export_loaded(
    source: CheckpointEncoder, publisher: Publisher, export_cfg: ExportConfig, eval_cfg: EvalConfig = EvalConfig()
) -> int:
    frames = source.frames if source.frames is not None else demo_frames(source.capture)
    return export_encoder(
        source.step,
        source.encoder,
        frames,
        export_cfg=export_cfg,
        model_cfg=source.model,
        publisher=publisher,
        mean=source.mean,
        std=source.std,
        capture=source.capture,
        eval_cfg=eval_cfg,
        calibrate=source.frames is not None,
    )


def published_step(export_dir: Path) -> Optional[int]:
    """Training step of what LATEST names (None if nothing valid is published): a restart's starting point."""
    try:
        name = read_latest(export_dir)
        return read_manifest(export_dir / name).step if name else None
    except ModelFileError:
        return None


@dataclass
class WatchState:
    """What `watch` did, written as `status-exporter.json` for the supervisor."""

    last_export_version: Optional[int] = None
    last_export_step: Optional[int] = None
    exports: int = 0
    refusals: int = 0
    last_refusal: Optional[str] = None
    refused_steps: set[int] = field(default_factory=set)
    io_failures: int = 0  # exports that could not be written (disk full): retried, never refusals
    failures_in_a_row: int = 0
    retry_at: float = 0.0  # time.monotonic() before which no export is tried after an I/O failure
    drift: dict[str, Any] = field(default_factory=dict)  # the last published version's `drift_record`

    def to_json(self) -> dict[str, Any]:
        return {
            "last_export_version": self.last_export_version,
            "last_export_step": self.last_export_step,
            "exports": self.exports,
            "refusals": self.refusals,
            "last_refusal": self.last_refusal,
            "io_failures": self.io_failures,
            **self.drift,
            "time": time.time(),
        }


def watch(
    run_dir: Path,
    publisher: Publisher,
    export_cfg: ExportConfig,
    stop: threading.Event,
    *,
    poll_s: float = 2.0,
    status_path: Optional[Path] = None,
    report: Callable[[str], None] = lambda line: print(line, flush=True),
    operator_model: Optional[ModelConfig] = None,
    eval_cfg: EvalConfig = EvalConfig(),
    record: Optional[Callable[[dict[str, Any]], None]] = None,
) -> WatchState:
    """Export each new checkpoint (throttled by export.every_steps / every_seconds) until `stop`; then once more.

    The last pass ignores the throttle, so the final checkpoint a stopping trainer writes is
    published. A refused step is not retried; refusals are reported and counted, never fatal.
    `record(event)` takes the "export" / "export_refused" events (default: appended to the run's
    metrics.jsonl; `byol-agent export --watch` hands in the run's metrics sinks).
    """
    if record is None:
        record = functools.partial(_record, run_dir)
    state = WatchState(last_export_step=published_step(publisher.export_dir))
    last_time = time.monotonic()
    stopping = False
    while True:
        newest = next(iter(list_checkpoints(run_dir)), (None, None))[0]
        if newest is not None and _due(newest, state, export_cfg, last_time, final=stopping):
            _export_once(run_dir, publisher, export_cfg, state, report, operator_model, eval_cfg, record)
            last_time = time.monotonic()
            if status_path is not None:
                write_status(status_path, state.to_json())
        if stopping:
            return state
        stopping = stop.wait(poll_s)


def _due(step: int, state: WatchState, cfg: ExportConfig, last_time: float, final: bool) -> bool:
    if not final and time.monotonic() < state.retry_at:
        return False
    if step in state.refused_steps:
        return False
    if final:  # the stopping trainer's last checkpoint is published whatever the throttle says
        return state.last_export_step is None or step > state.last_export_step
    return cadence.due(step, state.last_export_step, cfg.every_steps, time.monotonic() - last_time, cfg.every_seconds)


def _export_once(
    run_dir: Path,
    publisher: Publisher,
    cfg: ExportConfig,
    state: WatchState,
    report: Callable[[str], None],
    operator_model: Optional[ModelConfig],
    eval_cfg: EvalConfig,
    record: Callable[[dict[str, Any]], None],
) -> None:
    try:
        source = load_checkpoint_encoder(run_dir, cfg.weights, operator_model, frames_wanted(cfg))
    except ByolAgentError as exc:  # e.g. no readable checkpoint yet: try again at the next poll
        log.warning("export skipped: %s", exc)
        return
    done = state.last_export_step is not None and source.step <= state.last_export_step
    if done or source.step in state.refused_steps:
        return  # the newest file was unreadable and an older checkpoint came back
    try:
        version = export_loaded(source, publisher, cfg, eval_cfg)
    except StorageError as exc:  # disk full or unwritable: not the model's fault, so try again later
        state.io_failures += 1
        state.failures_in_a_row += 1
        backoff = backoff_s(state.failures_in_a_row, first_s=2.0, max_s=IO_BACKOFF_MAX_S)
        state.retry_at = time.monotonic() + backoff
        log.warning("export of step %d not written, retrying in %.0f s: %s", source.step, backoff, exc)
        return
    except ExportRefused as exc:
        state.refusals += 1
        state.last_refusal = str(exc)
        state.refused_steps.add(source.step)
        log.warning("export of step %d refused, keeping the last good version: %s", source.step, exc)
        report(f"export refused at step {source.step}: {exc}")
        record({"event": "export_refused", "time": time.time(), "step": source.step, "reason": str(exc)})
        return
    state.exports += 1
    state.failures_in_a_row, state.retry_at = 0, 0.0
    state.last_export_version, state.last_export_step = version, source.step
    state.drift = drift_record(publisher.export_dir, version)
    record({"event": "export", "time": time.time(), "step": source.step, "version": version, **state.drift})
    report(f"published version {version} (step {source.step}) to {publisher.export_dir}")


def _record(run_dir: Path, event: dict[str, Any]) -> None:
    """Append an event to the run's metrics; the record is advisory, so a full disk only costs a warning."""
    try:
        append_event(run_dir, event)
    except StorageError as exc:
        log.warning("%s event not recorded: %s", event.get("event"), exc)
