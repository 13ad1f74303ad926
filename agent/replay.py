"""Offline replay: recorded video → a real capture process → loopback ZeroMQ → the continual trainer.

Replay takes exactly the path live frames take (capture's resizing, novelty gate and wire format,
the trainer's ingest thread and buffer), so what is learned offline is what the robot would learn.
`pace="realtime"` plays each recording at its recorded speed; `pace="asap"` makes capture
lossless and the trainer hold ingestion back, so frames flow exactly as fast as training uses them.
The run ends when the recordings are exhausted and training has caught up, or at max steps.
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path
from typing import Optional

from agent.core.config import CaptureConfig, Config, Pace
from agent.core.errors import SourceError
from agent.robot.sources import check_sources
from agent.supervisor import ChildSpec, Supervisor

log = logging.getLogger(__name__)

LOOPBACK_ANY_PORT = "tcp://127.0.0.1:*"
CAPTURE_STOP_TIMEOUT_S = 15.0
WATCH_EVERY_S = 0.2


def check_recordings(paths: list[str], capture_cfg: CaptureConfig) -> None:
    """Open each recording and decode its first frame (`check_sources`, the check `run` makes too);
    SourceError (one line) names the first bad one, or a source that is not a recording."""
    if not paths:
        raise SourceError("no recordings given (expected one or more video files, image folders or globs)")
    for source in check_sources(paths, capture_cfg):
        if not source.finite:
            raise SourceError(f"{source.name} is not a recording (replay takes video files, image folders or globs)")


def replay_config(cfg: Config, paths: list[str]) -> Config:
    """The run's config for replay: these recordings, played once, into a trainer on a free loopback port."""
    tree = cfg.model_dump(mode="json")
    tree["capture"].update(sources=[str(Path(p).resolve()) if Path(p).exists() else p for p in paths], loop_video=False)
    tree["wire"].update(endpoint=LOOPBACK_ANY_PORT, publish=None)
    return Config.model_validate(tree)


class ReplayCapture:
    """`byol-agent capture` as a supervised child (agent.supervisor, no restarts: a recording that fails
    fails the same way again); `done` is set when it has exited, `failure` then holds its one-line reason."""

    def __init__(self, config_path: Path, pace: Pace, log_dir: Path) -> None:
        self._config_path, self._pace, self._log_dir = config_path, pace, log_dir
        self._supervisor: Optional[Supervisor] = None
        self._watcher: Optional[threading.Thread] = None
        self._stopping = threading.Event()
        self.done = threading.Event()
        self.failure: Optional[str] = None

    def start(self, endpoint: str) -> None:
        """Start capture sending to `endpoint` (the trainer's bound PULL)."""
        argv = [sys.executable, "-m", "agent.cli", "capture", "--config", str(self._config_path),
                "--endpoint", endpoint, "--publish", "none"]
        argv += ["--pace", "asap", "--lossless"] if self._pace == "asap" else ["--pace", "realtime"]
        spec = ChildSpec("replay-capture", argv, stop_timeout_s=CAPTURE_STOP_TIMEOUT_S)
        self._supervisor = Supervisor([spec], self._log_dir, max_restarts=0)
        self._supervisor.start()
        self._watcher = threading.Thread(target=self._watch, name="replay-capture-watch", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        """The supervisor's only user until `stop`: polls it until the child has exited."""
        while not self._stopping.wait(WATCH_EVERY_S):
            if not self._supervisor.check(self._on_report):
                self.failure = self._last_report
            if self._supervisor.finished:
                self.done.set()
                return

    def _on_report(self, message: str) -> None:
        self._last_report = message
        log.info("%s", message)

    def stop(self) -> None:
        """SIGINT (capture stops cleanly), then SIGKILL if it is still there after a grace period."""
        if self._supervisor is None:
            return
        self._stopping.set()
        self._watcher.join()
        self._supervisor.stop()


def replay(cfg: Config, paths: list[str], run_dir: Path, *, pace: Pace, stop: threading.Event) -> int:
    """Train on `paths` through capture → wire → trainer; returns 0, raises SourceError for bad input."""
    check_recordings(paths, cfg.capture)
    from agent.pipeline import build_trainer  # torch loads only once the recordings are known good

    cfg = replay_config(cfg, paths)
    run_dir = Path(run_dir)
    trainer = build_trainer(cfg, run_dir, lossless=pace == "asap")
    capture = ReplayCapture(run_dir / "config.yaml", pace, run_dir / "logs")
    try:
        trainer.run(stop, input_done=capture.done, on_bound=capture.start)
    finally:
        capture.stop()
    if capture.failure is not None:
        raise SourceError(capture.failure)
    return 0
