"""`byol-agent train`: the continual BYOL trainer, fed over ZeroMQ (the work is in trainer.continual).

Under torchrun (`torchrun --nproc-per-node N -m agent.cli train ...`) each rank runs this command:
it joins the process group (trainer/distributed.py) and binds its own endpoint; rank 0 alone takes
the run directory's lock and writes into it. `--nproc N` is the short way on one machine: it runs
the same command under torchrun (agent/launch.py) and passes its exit status through.
"""

from __future__ import annotations

import argparse
import logging
import os
from contextlib import ExitStack
from pathlib import Path

from agent.commands._common import add_config_arguments, config_from_args, lock_run_dir
from agent.core.errors import ConfigError
from agent.core.interrupts import StopFlag
from agent.robot.endpoints import check_bindable, validate_endpoint, validate_endpoints

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number of processes")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoint", default=None, help="ZeroMQ endpoint to bind for frames (default: config wire.endpoint)"
    )
    parser.add_argument(
        "--run-dir", required=True, help="checkpoints, metrics.jsonl and exports go here; a rerun resumes"
    )
    parser.add_argument("--max-steps", type=int, default=None, help="stop at this total step count (across resumes)")
    parser.add_argument(
        "--nproc",
        type=positive_int,
        default=None,
        metavar="N",
        help="train with N ranks on this machine (runs this command under torchrun --standalone)",
    )
    add_config_arguments(parser)


def configure_logging(rank: int = 0, world_size: int = 1) -> None:
    prefix = f"[rank {rank}] " if world_size > 1 else ""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s")


def run_dir_config_is_input(config: str | None, run_dir: Path) -> bool:
    """True when --config is the run's own config.yaml (as `byol-agent run` passes it): leave it be."""
    return config is not None and Path(config).resolve() == (run_dir / "config.yaml").resolve()


def rank_words(args: argparse.Namespace) -> list[str]:
    """This command's words for each rank under torchrun: the same arguments without --nproc."""
    words = ["train", "--run-dir", str(args.run_dir)]
    if args.endpoint is not None:
        words += ["--endpoint", args.endpoint]
    if args.max_steps is not None:
        words += ["--max-steps", str(args.max_steps)]
    if args.config is not None:
        words += ["--config", args.config]
    return [*words, *args.overrides]


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, {"wire.endpoint": args.endpoint, "train.max_steps": args.max_steps})
    validate_endpoint(cfg.wire.endpoint, bind=True)
    run_dir = Path(args.run_dir)
    if args.endpoint is not None and cfg.wire.endpoints is not None:
        raise ConfigError("--endpoint and wire.endpoints both say where to bind; give one of them")
    if args.nproc is not None:
        if any(os.environ.get(name) for name in TORCHRUN_ENV):
            raise ConfigError("--nproc starts torchrun itself; under torchrun leave it out")
        from agent.launch import run_ranks
        from agent.pipeline import rank_endpoint

        endpoints = [rank_endpoint(cfg.wire, rank, args.nproc) for rank in range(args.nproc)]
        for endpoint in endpoints:  # one line here rather than a torchrun traceback from the ranks
            validate_endpoint(endpoint, bind=True)
        validate_endpoints([e for e in endpoints if not e.endswith(":*")] or endpoints, bind=True)  # no port twice
        for endpoint in endpoints:
            if endpoint.startswith("tcp://"):  # a port in use (ipc paths are taken over by the bind itself)
                check_bindable(endpoint)
        configure_logging()
        with lock_run_dir(run_dir, "train", cfg):  # held here for the ranks (they cannot inherit it through torchrun)
            return run_ranks(rank_words(args), args.nproc)

    from trainer.distributed import rank_from_env  # torch loads after the arguments are known good

    info = rank_from_env()
    stop = StopFlag()  # SIGINT/SIGTERM only set the event; the loop checkpoints and exits (all ranks together)
    configure_logging(info.rank, info.world_size)
    # Rank 0 alone owns the run directory; under `byol-agent run` the lock its supervisor handed down.
    with lock_run_dir(run_dir, "train", cfg) if info.rank == 0 else ExitStack():
        from agent.pipeline import build_trainer, rank_endpoint
        from trainer.continual import resolve_device
        from trainer.distributed import join

        validate_endpoint(rank_endpoint(cfg.wire, info.rank, info.world_size), bind=True)
        if info.rank == 0:  # an encoder nothing can publish fails now, not after hours of training
            from export.onnx_export import check_exportable

            check_exportable(cfg.model, cfg.export, cfg.capture.channels)
        ranks = join(info, resolve_device(cfg.train), cfg.train.collective_timeout_s)
        trainer = build_trainer(cfg, run_dir, ranks, write_config=not run_dir_config_is_input(args.config, run_dir))
        code = trainer.run(stop.event)
        ranks.close()
        return code
