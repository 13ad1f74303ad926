"""Offline replay: recorded video → a real capture process → loopback ZeroMQ → the continual trainer.

Replay takes exactly the path live frames take (capture's resizing, novelty gate and wire format,
the trainer's ingest thread and buffer), so what is learned offline is what the robot would learn.
`pace="realtime"` plays each recording at its recorded speed; `pace="asap"` makes capture
lossless and the trainer hold ingestion back, so frames flow exactly as fast as training uses them.
The run ends when the recordings are exhausted and training has caught up, or at max steps.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from pathlib import Path
from typing import Optional

from agent.core.config import CaptureConfig, Config, Pace, dump_config
from agent.core.errors import SourceError
from agent.core.worker import Worker
from agent.replay_progress import ReplayPlan, ReplayProgress, last_step_rate
from agent.robot.sources import check_sources, expand_sources, resolve_spec
from agent.supervisor import ChildSpec, Supervisor

log = logging.getLogger(__name__)

LOOPBACK_ANY_PORT = "tcp://127.0.0.1:*"
CAPTURE_STOP_TIMEOUT_S = 15.0
WATCH_EVERY_S = 0.2


def check_recordings(paths: list[str], capture_cfg: CaptureConfig) -> list[Optional[int]]:
    """Open each recording's cameras (a robot log: each image topic) and decode a first frame
    (`check_sources`, the check `run` makes too); returns each camera's frame count (None where the
    container does not say), in the order `replay_config` numbers them. SourceError (one line) names the
    first bad one, or a source that is not a recording."""
    if not paths:
        raise SourceError("no recordings given (expected one or more video files, image folders or globs)")
    counts = []
    for source in check_sources(paths, capture_cfg):
        if not source.finite:
            raise SourceError(
                f"{source.name} is not a recording (replay takes video files, robot logs, image folders or globs)"
            )
        counts.append(source.frame_count)
    return counts


def replay_config(cfg: Config, paths: list[str]) -> Config:
    """The run's config for replay: these recordings, played once, into a trainer on a free loopback port;
    one source per camera (`expand_sources`), existing paths made absolute (`resolve_spec`). Checkpoints keep the
    replay buffer (`train.save_buffer`, unless the config sets it): a resumed replay skips the frames already
    delivered, so without them it would train only on what is left."""
    tree = cfg.model_dump(mode="json")
    sources = expand_sources([resolve_spec(p) for p in paths], cfg.capture)
    tree["capture"].update(sources=sources, loop_video=False)
    if "save_buffer" not in cfg.train.model_fields_set:
        tree["train"]["save_buffer"] = True
    tree["wire"].update(endpoint=LOOPBACK_ANY_PORT, endpoints=None, publish=None)  # one trainer, never a fleet's ranks
    return Config.model_validate(tree)


class ReplayCapture:
    """`byol-agent capture` as a supervised child (agent.supervisor, no restarts: a recording that fails
    fails the same way again); `done` is set when it has exited, `failure` then holds its one-line reason."""

    def __init__(self, config_path: Path, pace: Pace, log_dir: Path) -> None:
        self._config_path, self._pace, self._log_dir = config_path, pace, log_dir
        self._supervisor: Optional[Supervisor] = None
        self._watcher: Optional[_CaptureWatch] = None
        self.done = threading.Event()
        self.failure: Optional[str] = None

    def start(self, endpoint: str) -> None:
        """Start capture sending to `endpoint` (the trainer's bound PULL)."""
        run_dir = self._log_dir.parent  # the counts `byol-agent report` reads, as `run`'s capture writes them
        argv = [
            sys.executable,
            "-m",
            "agent.cli",
            "capture",
            "--config",
            str(self._config_path),
            "--endpoint",
            endpoint,
            "--publish",
            "none",
            "--status-file",
            str(run_dir / "status-capture.json"),
            "--history-file",
            str(run_dir / "capture.jsonl"),
        ]
        argv += ["--pace", "asap", "--lossless"] if self._pace == "asap" else ["--pace", "realtime"]
        spec = ChildSpec("replay-capture", argv, stop_timeout_s=CAPTURE_STOP_TIMEOUT_S)
        self._supervisor = Supervisor([spec], self._log_dir, max_restarts=0)
        self._supervisor.start()
        self._watcher = _CaptureWatch(self, self._supervisor)
        self._watcher.start()

    def stop(self) -> None:
        """SIGINT (capture stops cleanly), then SIGKILL if it is still there after a grace period."""
        if self._supervisor is None:
            return
        if self._watcher is not None:
            self._watcher.stop(timeout_s=None)  # out of its last look before the supervisor is used here
        codes = self._supervisor.stop()
        code = codes.get("replay-capture")
        if self.failure is None and code not in (None, 0, 130):  # it failed after the watcher's last look
            self.failure = f"replay-capture exited with code {code} (see {self._log_dir / 'replay-capture.log'})"


class _CaptureWatch(Worker):
    """The supervisor's only user until `ReplayCapture.stop`: polls it until the child has exited, then sets
    `done` (and `failure` when a report said the child failed)."""

    def __init__(self, capture: ReplayCapture, supervisor: Supervisor) -> None:
        super().__init__("replay-capture-watch")
        self._capture, self._supervisor = capture, supervisor
        self._last_report: Optional[str] = None

    def loop_once(self) -> Optional[bool]:
        if self.stop_event.wait(WATCH_EVERY_S):
            return False
        if not self._supervisor.check(self._on_report):
            self._capture.failure = self._last_report
        if self._supervisor.finished:
            self._capture.done.set()
            return False
        return True

    def _on_report(self, message: str) -> None:
        self._last_report = message
        log.info("%s", message)


def replay(
    cfg: Config,
    paths: list[str],
    run_dir: Path,
    *,
    pace: Pace,
    stop: threading.Event,
    progress: Optional[bool] = None,
    frame_counts: Optional[list[Optional[int]]] = None,
) -> int:
    """Train on `paths` through capture → wire → trainer; returns 0, raises SourceError for bad input.

    Each frame gets `train.replay_ratio` updates (so the run takes about ratio × frames steps, and a
    frame appears in about ratio × batch samples). A rerun on the same run dir resumes the trainer
    from its checkpoint and capture from the frames each recording already delivered
    (`capture.start_frames`, from the checkpoint's per-camera counts): nothing is read twice.
    `progress` (default: when stderr is a terminal) shows a bar with steps, frames and an ETA; the
    trainer's own status lines then go to RUN_DIR/logs/replay-trainer.log. `frame_counts`: what
    `check_recordings(paths)` returned, when the caller has already checked them (not checked again).
    """
    counts = check_recordings(paths, cfg.capture) if frame_counts is None else frame_counts
    from agent.pipeline import build_trainer  # torch loads only once the recordings are known good

    cfg = replay_config(cfg, paths)
    run_dir = Path(run_dir)
    show = sys.stderr.isatty() if progress is None else progress
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    trainer_log = open(run_dir / "logs" / "replay-trainer.log", "a") if show else None
    try:
        trainer = build_trainer(cfg, run_dir, lossless=pace == "asap", stream=trainer_log)
        base = cfg.capture.camera_id_base
        delivered = [trainer.counters.frames_per_camera.get(base + i, 0) for i in range(len(cfg.capture.sources))]
        capture_cfg = cfg.model_copy(update={"capture": cfg.capture.model_copy(update={"start_frames": delivered})})
        capture_config = run_dir / "replay-capture.yaml"
        dump_config(capture_cfg, capture_config)
        gated = cfg.capture.novelty_threshold is not None and cfg.capture.novelty_threshold > 0
        plan = ReplayPlan(
            counts,
            delivered,
            cfg.train.replay_ratio,
            cfg.train.batch_size,
            trainer.step,
            frames_in=trainer.counters.frames_in,
            gated=gated,
        )
        print(
            f"replay: {plan.describe(last_step_rate(run_dir) if trainer.step else None)}", file=sys.stderr, flush=True
        )
        capture = ReplayCapture(capture_config, pace, run_dir / "logs")
        bar = ReplayProgress(trainer, plan) if show else None
        moved = bar.take_log_lines() if bar is not None else []
        try:
            if bar is not None:
                bar.start()
            trainer.run(stop, input_done=capture.done, on_bound=capture.start)
        finally:
            capture.stop()
            if bar is not None:
                bar.stop(timeout_s=5.0)
                bar.close()
                for handler, stream in moved:
                    handler.setStream(stream)
    finally:
        if trainer_log is not None:
            trainer_log.close()
    for line in source_problems(run_dir):
        print(f"replay: {line}", file=sys.stderr, flush=True)
    if capture.failure is not None:
        raise SourceError(capture.failure)
    if stop.is_set():
        total = "?" if plan.total_steps is None else plan.total_steps
        print(
            f"replay: stopped at step {trainer.step} of about {total} (checkpointed); run the same command again to "
            "resume where it stopped",
            file=sys.stderr,
            flush=True,
        )
    return 0


def source_problems(run_dir: Path) -> list[str]:
    """One line per source capture reported damage (`errors`) or skipped frames for, read from the run's
    status-capture.json, with the encodings capture's log names for skipped frames; [] when it has none."""
    try:
        sources = json.loads((run_dir / "status-capture.json").read_text())["sources"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    log_path = run_dir / "logs" / "replay-capture.log"
    try:
        log_text = log_path.read_text(errors="replace")
    except OSError:
        log_text = ""
    lines = []
    for source in sources:
        name, errors, skipped = source.get("name", "?"), source.get("errors", 0), source.get("skipped", 0)
        if errors:
            lines.append(f"{name}: damaged after {source.get('frames_read', 0)} frames (see {log_path})")
        if skipped:
            encodings = sorted(set(re.findall(re.escape(f"{name}: skipping its ") + r"(\S+) images", log_text)))
            why = f"encoding {', '.join(encodings)}" if encodings else f"unreadable; see {log_path}"
            lines.append(f"{name}: {skipped} frames skipped ({why})")
    return lines
