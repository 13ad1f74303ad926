"""Offline replay: recorded video → a real capture process → loopback ZeroMQ → the continual trainer.

Replay takes exactly the path live frames take (capture's resizing, novelty gate and wire format,
the trainer's ingest thread and buffer), so what is learned offline is what the robot would learn.
`pace="timestamps"` plays each recording at its recorded speed; `pace="asap"` makes capture
lossless and the trainer hold ingestion back, so frames flow exactly as fast as training uses them.
The run ends when the recordings are exhausted and training has caught up, or at max steps.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Literal, Optional

from agent.core.config import CaptureConfig, Config
from agent.core.errors import SourceError
from agent.robot.sources import open_source

log = logging.getLogger(__name__)

Pace = Literal["timestamps", "asap"]
LOOPBACK_ANY_PORT = "tcp://127.0.0.1:*"
CAPTURE_STOP_TIMEOUT_S = 15.0


def check_recordings(paths: list[str], capture_cfg: CaptureConfig) -> None:
    """Open each recording and decode its first frame; SourceError (one line) names the first bad one."""
    if not paths:
        raise SourceError("no recordings given (expected one or more video files, image folders or globs)")
    for spec in paths:
        source = open_source(spec, capture_cfg)
        if not source.finite:
            raise SourceError(f"{source.name} is not a recording (replay takes video files, image folders or globs)")
        source.connect()
        source.disconnect()


def replay_config(cfg: Config, paths: list[str]) -> Config:
    """The run's config for replay: these recordings, played once, into a trainer on a free loopback port."""
    tree = cfg.model_dump(mode="json")
    tree["capture"].update(sources=[str(Path(p).resolve()) if Path(p).exists() else p for p in paths], loop_video=False)
    tree["wire"].update(endpoint=LOOPBACK_ANY_PORT, publish=None)
    return Config.model_validate(tree)


class CaptureProcess:
    """`byol-agent capture` as a child process; `done` is set when it exits (recordings exhausted or failed)."""

    def __init__(self, config_path: Path, pace: Pace, log_path: Path) -> None:
        self._config_path = config_path
        self._pace = pace
        self._log_path = log_path
        self._proc: Optional[subprocess.Popen] = None
        self.done = threading.Event()
        self.returncode: Optional[int] = None

    def start(self, endpoint: str) -> None:
        argv = [sys.executable, "-m", "agent.cli", "capture", "--config", str(self._config_path),
                "--endpoint", endpoint, "--publish", "none"]
        argv += ["--pace", "asap", "--lossless"] if self._pace == "asap" else ["--pace", "realtime"]
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._log_path, "ab") as out:
            self._proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        threading.Thread(target=self._watch, name="capture-watch", daemon=True).start()
        log.info("replay capture started (pid %d, log %s)", self._proc.pid, self._log_path)

    def _watch(self) -> None:
        self.returncode = self._proc.wait()
        self.done.set()

    def stop(self) -> None:
        """SIGINT (capture stops cleanly), then SIGKILL if it is still there after a grace period."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGINT)
        try:
            self._proc.wait(CAPTURE_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def failure(self) -> Optional[str]:
        """A one-line reason when the capture exited with an error, else None."""
        if self.returncode in (None, 0):
            return None
        lines = [ln for ln in self._log_path.read_text(errors="replace").splitlines() if ln.strip()]
        last = lines[-1].strip()[-200:] if lines else "no output"
        return f"replay capture exited with code {self.returncode}: {last}"


def replay(cfg: Config, paths: list[str], run_dir: Path, *, pace: Pace, stop: threading.Event) -> int:
    """Train on `paths` through capture → wire → trainer; returns 0, raises SourceError for bad input."""
    check_recordings(paths, cfg.capture)
    from agent.pipeline import build_trainer  # torch loads only once the recordings are known good

    cfg = replay_config(cfg, paths)
    run_dir = Path(run_dir)
    trainer = build_trainer(cfg, run_dir, lossless=pace == "asap")
    capture = CaptureProcess(run_dir / "config.yaml", pace, run_dir / "logs" / "replay-capture.log")
    try:
        trainer.run(stop, input_done=capture.done, on_bound=capture.start)
    finally:
        capture.stop()
    reason = capture.failure()
    if reason is not None:
        raise SourceError(reason)
    return 0
