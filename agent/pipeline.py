"""Wiring the layers together for one job: the trainer gets its frame inbox and exporter from here.

The learner (trainer/) may not import the transport or the exporter, which sit above it; this
orchestration module builds them from the config and hands them in. Used by `byol-agent train`,
`byol-agent replay` and anyone embedding a trainer in their own process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.core.config import Config, WireConfig
from agent.robot.curve import WireSecurity
from agent.robot.transport import FrameReceiver
from trainer.continual import ContinualTrainer


def open_frame_receiver(wire: WireConfig) -> FrameReceiver:
    """The trainer's bound PULL with the config's limits and CURVE keys; EndpointError / ConfigError (one line)."""
    security = WireSecurity.from_config(wire)
    return FrameReceiver(wire.endpoint, hwm=wire.recv_hwm, max_side=wire.max_frame_side, security=security)


def build_trainer(cfg: Config, run_dir: Path, **options: Any) -> ContinualTrainer:
    """A ContinualTrainer fed from `cfg.wire`, publishing into RUN_DIR/exports when `cfg.export` asks it to.

    `options` are ContinualTrainer's keyword options (lossless, write_config, stream).
    """

    def make_exporter(mean: tuple[float, ...], std: tuple[float, ...]):
        from export.exporter import BackgroundExporter  # onnx/onnxruntime load only when exporting in-process

        exports = Path(run_dir) / "exports"
        return BackgroundExporter(cfg.export, cfg.model, exports, mean=mean, std=std, capture=cfg.capture, eval_cfg=cfg.eval)

    return ContinualTrainer(
        cfg, run_dir, open_receiver=lambda: open_frame_receiver(cfg.wire), make_exporter=make_exporter, **options
    )
