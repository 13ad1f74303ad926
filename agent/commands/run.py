"""`byol-agent run`: the main job — capture, trainer, exporter and a runtime consumer, supervised."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Optional

from agent.commands._common import add_config_arguments, config_from_args
from agent.core.config import Config, dump_config
from agent.core.errors import ConfigError, EndpointError
from agent.core.interrupts import StopFlag
from agent.core.run_lock import lock_directory
from agent.supervisor import ChildSpec, Supervisor, over_fps_cap_note, read_status, supervise


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        action="append",
        default=None,
        help="camera index, video, URL, image folder/glob, robot log (MCAP, rosbag2, .bag; LOG#TOPIC), LeRobot "
        "dataset folder or 'demo' (repeat for several cameras; default: config)",
    )
    parser.add_argument(
        "--duration", type=float, default=None, help="stop after this many seconds (default: until Ctrl-C)"
    )
    parser.add_argument("--run-dir", default="runs/default", help="checkpoints, exports, metrics and logs go here")
    add_config_arguments(parser)


def _cli(*words: str) -> list[str]:
    return [sys.executable, "-m", "agent.cli", *words]


def child_specs(cfg: Config, run_dir: Path, config_path: Path) -> list[ChildSpec]:
    """The pipeline's processes in stop order (upstream first, so nothing downstream loses its input early)."""
    cfg_arg = ["--config", str(config_path)]
    exports = run_dir / "exports"
    # The exporter publishes from checkpoints, so the trainer checkpoints at least as often as it is to export
    # (by steps and by time): export.every_steps / every_seconds then mean here what they mean in `train`.
    trainer_args = ["export.every_steps=null", "export.every_seconds=null"]
    every_n, every_s, ckpt_s = cfg.export.every_steps, cfg.export.every_seconds, cfg.train.checkpoint_every_seconds
    if every_n is not None and cfg.train.checkpoint_every > every_n:
        trainer_args.append(f"train.checkpoint_every={every_n}")
    if every_s is not None and (ckpt_s is None or ckpt_s > every_s):
        trainer_args.append(f"train.checkpoint_every_seconds={every_s:g}")
    specs = [
        ChildSpec(
            "capture",
            _cli(
                "capture",
                *cfg_arg,
                "--status-file",
                str(run_dir / "status-capture.json"),
                "--history-file",
                str(run_dir / "capture.jsonl"),
            ),
            15.0,
        ),
        # The exporter process owns publishing in this job, so the trainer's in-process exporter is off.
        ChildSpec(
            "trainer",
            _cli("train", *cfg_arg, "--run-dir", str(run_dir), *trainer_args),
            120.0,
        ),
        ChildSpec(
            "exporter", _cli("export", *cfg_arg, "--run-dir", str(run_dir), "--out", str(exports), "--watch"), 120.0
        ),
    ]
    if cfg.run.runtime_consumer and cfg.wire.publish:
        source = "zmq+" + cfg.wire.publish
        specs.append(
            ChildSpec(
                "runtime",
                _cli(
                    "runtime", *cfg_arg, "--export-dir", str(exports), "--source", source, "--status-dir", str(run_dir)
                ),
                15.0,
            )
        )
    return specs


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, {"capture.sources": args.source, "run.duration_s": args.duration})
    if cfg.wire.endpoints is not None and len(cfg.wire.endpoints) > 1:
        raise ConfigError(
            f"wire.endpoints lists {len(cfg.wire.endpoints)} trainer ranks, but `run` starts one trainer; run "
            "`byol-agent train --nproc N` and `byol-agent capture --endpoint ...` (README, 'Several GPUs or "
            "machines'), or set wire.endpoints=null"
        )
    from agent.robot.sources import check_sources

    check_sources(cfg.capture.sources, cfg.capture, cfg.wire)  # a bad file fails now, not as 3 capture restarts
    check_ports(cfg)  # a port in use fails now, not as the trainer's restarts and "trained on nothing"
    run_dir = Path(args.run_dir).resolve()
    # Held for the whole pipeline and handed down to the children (the trainer holds it as its own),
    # so a second `run` or `train` on this directory is refused before it writes anything.
    with lock_directory(run_dir, "run") as lock:
        config_path = run_dir / "config.yaml"
        dump_config(cfg, config_path)
        (run_dir / "exports").mkdir(exist_ok=True)  # the runtime child waits in it; it must exist from the start
        print(f"run dir {run_dir}; sources {', '.join(cfg.capture.sources)}; Ctrl-C stops cleanly", file=sys.stderr)
        pass_fds, env = lock.inheritance()
        sup = Supervisor(
            child_specs(cfg, run_dir, config_path),
            run_dir / "logs",
            max_restarts=cfg.run.max_restarts,
            pass_fds=pass_fds,
            env=env,
        )
        stop = StopFlag()
        session_start = time.time()  # status files older than this are the previous session's (a resumed run)
        code = supervise(
            sup,
            run_dir,
            duration_s=cfg.run.duration_s,
            status_every_s=cfg.run.status_every_s,
            stop=stop,
            finish_with="trainer",
            since=session_start,
        )
    status = read_status(run_dir, since=session_start)
    problem = untrained(status, cfg)
    if problem is not None and stop.signum == signal.SIGINT and not code:
        print(
            "byol-agent run: interrupted before the first training step "
            f"({problem.removeprefix('trained on nothing: ')})",
            file=sys.stderr,
        )
        return 130  # the user's choice, not a failure
    if problem is not None:
        print(f"byol-agent run: {problem}", file=sys.stderr)
        return code or 1
    print(f"byol-agent run: {served(status)}", file=sys.stderr)
    return code


def check_ports(cfg: Config) -> None:
    """EndpointError (one line) naming the first TCP port `run`'s children would bind that is in use now
    (usually another `run` on the default ports), and how to pick others."""
    from agent.robot.endpoints import check_bindable

    binds = [
        ("wire.endpoint", cfg.wire.endpoints[0] if cfg.wire.endpoints else cfg.wire.endpoint),
        ("wire.publish", cfg.wire.publish),
    ]
    for key, endpoint in binds:
        if endpoint is None or not endpoint.startswith("tcp://") or endpoint.endswith(":*"):
            continue
        try:
            check_bindable(endpoint)
        except EndpointError as exc:
            raise EndpointError(
                f"{exc} ({key}; another `byol-agent run` on the same ports?): stop it, or give this run other ports, "
                f"e.g. wire.endpoint=tcp://127.0.0.1:5655 wire.publish=tcp://127.0.0.1:5656"
            ) from None


def served(status: dict[str, dict]) -> str:
    """One line on what this session published and served: versions exported, which versions served the runtime's
    calls and how often the serving version changed, and a version loaded after the calls ended (during shutdown)."""
    exp, rt = status.get("exporter", {}), status.get("runtime", {})
    exports, version = exp.get("exports"), exp.get("last_export_version")
    published = (
        f"published {exports} version(s) this session (latest v{version})"
        if exports
        else "published no version this session"
    )
    if not rt:
        return f"{published}; the runtime consumer never served (no status-runtime.json)"
    first, last = rt.get("first_served_version"), rt.get("last_served_version")
    if first is None:
        return f"{published}; the runtime served no call, {rt.get('failures', 0)} failed"
    versions = f"v{first}" if first == last else f"v{first} to v{last}"
    text = (
        f"{published}; the runtime served {rt.get('calls', 0)} call(s) on {versions} "
        f"({rt.get('served_swaps', 0)} swap(s) between calls), {rt.get('failures', 0)} failed"
    )
    loaded = rt.get("version")
    if loaded is not None and loaded != last:
        text += f"; v{loaded} was loaded after the last call (no call ran on it)"
    return text


def untrained(status: dict[str, dict], cfg: Config) -> Optional[str]:
    """Why a run that ended trained nothing (one line), or None when the trainer took at least one step."""
    trainer, capture = status.get("trainer", {}), status.get("capture", {})
    if trainer.get("step", 0) > 0:
        return None
    stored, needed = trainer.get("buffer_size", 0), cfg.buffer.min_fill
    if not capture:
        flow = "capture never reported (see logs/capture.log)"
    else:
        flow = (
            f"capture read {capture.get('frames_read', 0)}, kept {capture.get('kept', 0)} "
            f"(novelty skipped {capture.get('skipped_novelty', 0)}{over_fps_cap_note(capture)}), "
            f"sent {capture.get('sent', 0)}, "
            f"dropped {capture.get('dropped', 0)}"
        )
    return (
        f"trained on nothing: {flow}; the trainer stored {stored} of the {needed} frames it waits for "
        f"(buffer.min_fill) and took no step; nothing was exported"
    )
