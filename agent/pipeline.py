"""Wiring the layers together for one job: the trainer gets its frame inbox and exporter from here.

The learner (trainer/) may not import the transport or the exporter, which sit above it; this
orchestration module builds them from the config and hands them in. Used by `byol-agent train`,
`byol-agent replay` and anyone embedding a trainer in their own process.

In a multi-rank run (torchrun) each rank binds a PULL endpoint of its own (`rank_endpoint`) and only
rank 0 gets an exporter; the trainer itself never learns which transport it is fed from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.core.config import Config, WireConfig
from agent.core.errors import ConfigError
from agent.robot.curve import WireSecurity
from agent.robot.transport import FrameReceiver
from trainer.continual import ContinualTrainer
from trainer.distributed import SOLO, Ranks


def rank_endpoint(wire: WireConfig, rank: int, world_size: int) -> str:
    """The PULL endpoint global rank `rank` of `world_size` binds.

    `wire.endpoints[rank]` when the list is set (ConfigError, one line, when it has fewer entries than
    ranks). Otherwise `wire.endpoint` for rank 0 (so captures that connect to `wire.endpoint` feed it)
    and, for rank r > 0, the same with its TCP port + r (`tcp://HOST:*` stays '*', a free port each) or
    its ipc path + "-rankR". A single process binds `wire.endpoint` as it always did.
    """
    if wire.endpoints is not None:
        if len(wire.endpoints) < world_size:
            raise ConfigError(
                f"wire.endpoints lists {len(wire.endpoints)} endpoint(s) for {world_size} trainer ranks; "
                "give one per rank (global rank r binds endpoints[r]) or leave it unset"
            )
        return wire.endpoints[rank]
    endpoint = wire.endpoint
    if rank == 0:
        return endpoint
    if endpoint.startswith("tcp://"):
        head, _, port = endpoint.rpartition(":")
        if port == "*":
            return endpoint
        shifted = int(port) + rank
        if shifted > 65535:
            raise ConfigError(
                f"wire.endpoint {endpoint!r}: rank {rank} would bind port {shifted}, past 65535; "
                "pick a lower port or list wire.endpoints"
            )
        return f"{head}:{shifted}"
    return f"{endpoint}-rank{rank}"  # ipc:// (and inproc://): a path of its own per rank


def open_frame_receiver(wire: WireConfig, endpoint: str | None = None) -> FrameReceiver:
    """The trainer's bound PULL (at `endpoint`, default `wire.endpoint`) with the config's limits and
    CURVE keys; EndpointError / ConfigError (one line)."""
    security = WireSecurity.from_config(wire)
    return FrameReceiver(endpoint or wire.endpoint, hwm=wire.recv_hwm, max_side=wire.max_frame_side, security=security)


def build_trainer(cfg: Config, run_dir: Path, ranks: Ranks = SOLO, **options: Any) -> ContinualTrainer:
    """A ContinualTrainer fed from `cfg.wire`, publishing into RUN_DIR/exports when `cfg.export` asks it to.

    `ranks`: this process's place in a multi-rank run (trainer.distributed.join), which picks the
    endpoint it binds; only rank 0 publishes. `options` are ContinualTrainer's keyword options
    (lossless, write_config, stream).
    """
    endpoint = rank_endpoint(cfg.wire, ranks.rank, ranks.world_size)

    def make_exporter(mean: tuple[float, ...], std: tuple[float, ...]):
        from export.exporter import BackgroundExporter  # onnx/onnxruntime load only when exporting in-process

        exports = Path(run_dir) / "exports"
        return BackgroundExporter(
            cfg.export, cfg.model, exports, mean=mean, std=std, capture=cfg.capture, eval_cfg=cfg.eval
        )

    return ContinualTrainer(
        cfg,
        run_dir,
        open_receiver=lambda: open_frame_receiver(cfg.wire, endpoint),
        make_exporter=make_exporter if ranks.rank == 0 else None,
        ranks=ranks,
        **options,
    )
