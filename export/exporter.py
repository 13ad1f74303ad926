"""Export → verify → publish, once (`export_encoder`) or on its own thread beside training (`BackgroundExporter`).

The trainer hands over an eval copy of its encoder plus real frames and carries on; the export
thread does the slow part. Only the newest pending request is kept: an older snapshot of a model
that has moved on is not worth publishing. A refused export publishes nothing, so the last good
version stays live; the refusal is logged and reported through `poll()` for the trainer's metrics.
Nothing an export raises ends the thread or training: a failure that is no refusal (a bug, a dead
export process) is logged with its traceback and reported as an `export_failed` event. With the
dynamo exporter the trace runs in a child process (export/isolated.py): torch.export's state is
process-global and raced the training thread (`KeyError: 'custom'` in `optimizer.zero_grad`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from torch import nn

from agent.core.config import CaptureConfig, EvalConfig, ExportConfig, ModelConfig
from agent.core.errors import ByolAgentError, StorageError
from agent.core.frames import as_frame_batch
from agent.core.worker import Worker
from export.drift_gate import drift_record
from export.fit_maps import fit_for_export
from export.onnx_export import OUTPUT_NAME, input_spec
from export.probe_gate import probe_gate
from export.publish import Artifact, Publisher
from export.targets import MODEL_TARGET, TARGETS, ExportJob, wanted_targets
from export.targets.onnx_model import manifest_fields
from trainer.normalise import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["BackgroundExporter", "export_encoder", "manifest_fields"]

log = logging.getLogger(__name__)


def export_encoder(
    step: int,
    encoder: nn.Module,
    frames: np.ndarray,
    *,
    export_cfg: ExportConfig,
    model_cfg: ModelConfig,
    publisher: Publisher,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    capture: Optional[CaptureConfig] = None,
    eval_cfg: EvalConfig = EvalConfig(),
    calibrate: bool = True,
    beside_training: bool = False,
) -> int:
    """Export `encoder` (normalised float NCHW → (N, D)), verify it on `frames` (uint8 NHWC, any size), publish.

    `capture` is the section the training frames were stored with: the manifest records it so that
    serving fits camera frames exactly as capture did (None: frames are resized straight to the input).

    The first time it is given ≥ 32 frames it keeps up to `export_cfg.calibration_frames` of them as
    the directory's calibration set; each later version gets a map into the previous version's
    embedding space fit on it (`export.fit_maps`), recorded in the manifest's "compat" section.
    `calibrate=False`: `frames` are not the robot's (demo stand-ins); never draw the set from them.
    `beside_training`: training runs in this process (BackgroundExporter): the dynamo exporter traces
    in a child process (`export.onnx_export.export_graph`).

    Every export target `export_cfg` wants (export/targets/: the ONNX model always, `encoder-NNNNNN.pt`
    with `export.torch_weights`) is written first and published with the version, listed in its manifest.

    Returns the published version; raises ExportRefused (nothing published) when a gate fails
    (parity, collapse, the drift gate `export_cfg.min_compatibility`, and the probe gate when
    `export_cfg.probe_gate` names a labelled set).
    """
    frames = as_frame_batch(frames)
    job = ExportJob(
        int(step),
        encoder.eval(),
        frames,
        input_spec(export_cfg.input_format, model_cfg.image_size, mean, std, capture),
        export_cfg,
        model_cfg,
        beside_training,
    )
    written: dict[str, tuple[Path, dict[str, Any]]] = {}
    temps: list[Path] = []
    try:
        for target in wanted_targets(export_cfg):  # the model first: a refused model leaves the others unwritten
            tmp = publisher.temp_path(target.suffix)
            temps.append(tmp)
            written[target.name] = (tmp, target.write(job, tmp))
        model_tmp, fields = written.pop(MODEL_TARGET)
        if export_cfg.probe_gate is not None:
            fields["eval"] = probe_gate(model_tmp, publisher.export_dir, export_cfg, eval_cfg)
        fields["compat"], maps = fit_for_export(
            model_tmp, job.spec, OUTPUT_NAME, publisher.export_dir, frames if calibrate else None, export_cfg
        )
        artifacts = {name: Artifact(tmp, TARGETS[name].suffix, described) for name, (tmp, described) in written.items()}
        return publisher.publish(model_tmp, fields, maps, artifacts)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


@dataclass
class _Job:
    step: int
    encoder: nn.Module
    frames: np.ndarray


class BackgroundExporter(Worker):
    """Runs `export_encoder` on its own thread (an `agent.core.worker.Worker`); `submit` returns at once.

    Torch's thread count is left alone: it is partly process-wide (MKL), so lowering it here would
    slow the trainer too; the export itself is a single trace plus a few-frame forward.
    """

    def __init__(
        self,
        export_cfg: ExportConfig,
        model_cfg: ModelConfig,
        export_dir: Path,
        *,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        capture: Optional[CaptureConfig] = None,
        eval_cfg: EvalConfig = EvalConfig(),
    ) -> None:
        super().__init__("export")
        self._export_cfg = export_cfg
        self._capture = capture
        self._eval_cfg = eval_cfg
        self._model_cfg = model_cfg
        self._mean = tuple(mean)
        self._std = tuple(std)
        self._publisher = Publisher(Path(export_dir), export_cfg.keep)
        self._cond = threading.Condition()
        self._pending: Optional[_Job] = None
        self._closing = False
        self._events: list[dict[str, Any]] = []
        self.start()

    def submit(self, step: int, encoder: nn.Module, frames: np.ndarray) -> None:
        """Queue an export of `encoder` (ownership passes to the exporter); replaces an older pending one."""
        self.check()
        frames = as_frame_batch(frames).copy()  # the caller's buffer may be overwritten while we work
        with self._cond:
            if self._closing:
                raise RuntimeError("BackgroundExporter.submit after close")
            if self._pending is not None:
                log.info("export of step %d superseded by step %d before it started", self._pending.step, step)
            self._pending = _Job(int(step), encoder, frames)
            self._cond.notify_all()

    def poll(self) -> list[dict[str, Any]]:
        """Results since the last poll: {"event": "export", "step", "version", and `export.drift_gate.drift_record`'s
        "r2", "cka_prev", "cka_pinned" when the version has a map}, {"event": "export_refused", "step", "reason"}
        (a gate or the exporter said no) or {"event": "export_failed", "step", "reason"} (disk full, a bug)."""
        self.check()
        with self._cond:
            events, self._events = self._events, []
        return events

    def close(self, timeout_s: Optional[float] = None) -> None:
        """Finish the pending export (if any), then stop the thread; re-raise an error it hit."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if not self.join(timeout_s):
            log.warning("exporter still busy after %.1f s; leaving it to finish in the background", timeout_s or 0.0)
        self.check()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def loop_once(self) -> bool:
        with self._cond:
            while self._pending is None and not self._closing and not self.stopping:
                self._cond.wait()
            job, self._pending = self._pending, None
        if job is None:
            return False  # closed (or stopped) with nothing pending
        event = self._run(job)
        with self._cond:
            self._events.append(event)
        return True

    def on_error(self, exc: BaseException) -> None:  # a bug in the loop itself (not in an export): stored for check()
        log.error("export thread failed: %r", exc, exc_info=exc)

    def _run(self, job: _Job) -> dict[str, Any]:
        """One export; whatever it raises becomes an event (nothing an export does may end training)."""
        try:
            version = export_encoder(
                job.step,
                job.encoder,
                job.frames,
                export_cfg=self._export_cfg,
                model_cfg=self._model_cfg,
                publisher=self._publisher,
                mean=self._mean,
                std=self._std,
                capture=self._capture,
                eval_cfg=self._eval_cfg,
                beside_training=True,
            )
            record = drift_record(self._publisher.export_dir, version)
        except StorageError as exc:  # disk full: the next scheduled export is the retry; not a refusal
            log.warning("export at step %d not written, keeping the last good version: %s", job.step, exc)
            return {"event": "export_failed", "step": job.step, "reason": str(exc)}
        except ByolAgentError as exc:
            log.warning("export at step %d refused, keeping the last good version: %s", job.step, exc)
            return {"event": "export_refused", "step": job.step, "reason": str(exc)}
        except Exception as exc:  # a bug in an export: logged with its traceback and reported, training goes on
            log.error("export at step %d failed, keeping the last good version", job.step, exc_info=exc)
            line = (str(exc).strip().splitlines() or [""])[0][:300]
            return {"event": "export_failed", "step": job.step, "reason": f"{type(exc).__name__}: {line}"}
        log.info("published encoder version %d (step %d)", version, job.step)
        return {"event": "export", "step": job.step, "version": version, **record}
