"""Runs the pipeline's processes side by side, restarts the ones that die, and stops them in order.

`byol-agent run` is capture → trainer → exporter → runtime, each a real OS process talking over
loopback ZeroMQ or the run directory. A child that fails is restarted after a back-off (1, 2, 4, ...
up to 30 s), so a fault that lasts a while (a full disk, a camera being replugged) does not burn
through the restart budget in seconds; a child that then runs healthily for a minute has its
budget refilled. Each child is its own process group, so a Ctrl-C reaches the
supervisor alone and the shutdown runs downstream-last: capture stops first, the trainer writes its
final checkpoint, the exporter publishes from it, and only then the runtime consumer stops.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from agent.core.backoff import backoff_s
from agent.core.interrupts import StopFlag
from trainer.metrics import drift_text

log = logging.getLogger(__name__)


@dataclass
class ChildSpec:
    """One supervised process: its argv and how long it may take to stop after SIGINT."""

    name: str
    argv: list[str]
    stop_timeout_s: float = 30.0


@dataclass
class _Child:
    spec: ChildSpec
    log_path: Path
    proc: Optional[subprocess.Popen] = None
    restarts: int = 0
    exit_codes: list[int] = field(default_factory=list)
    started_at: float = 0.0
    restart_at: Optional[float] = None  # time.monotonic() of a scheduled restart


def die_with_parent() -> None:
    """In a child before exec (Linux): have the kernel SIGTERM it if its parent (the supervisor, the
    `train --nproc` launcher) dies without cleaning up."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _child_setup() -> None:
    """In the child, before exec: die with the parent, and hold SIGINT pending until `agent.cli.main`
    unblocks it. A stop that arrives while the new interpreter is still starting (site, imports) then
    lands in our code (exit 130, no traceback) instead of killing Python inside its start-up."""
    die_with_parent()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


RESTART_BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0  # a child that ran this long before failing starts over with a full restart budget


class Supervisor:
    """Starts children, restarts dead ones (bounded, with back-off), and stops them in the given order."""

    def __init__(
        self,
        specs: list[ChildSpec],
        log_dir: Path,
        *,
        max_restarts: int,
        backoff_max_s: float = RESTART_BACKOFF_MAX_S,
        healthy_after_s: float = HEALTHY_AFTER_S,
        pass_fds: tuple[int, ...] = (),
        env: Optional[dict[str, str]] = None,
    ) -> None:
        """`pass_fds` and `env` go to every child (e.g. `DirLock.inheritance()`: the run-dir lock)."""
        self._children = [_Child(spec, log_dir / f"{spec.name}.log") for spec in specs]
        self._pass_fds = tuple(pass_fds)
        self._env = dict(env or {})
        self._max_restarts = max_restarts
        self._backoff_max_s = backoff_max_s
        self._healthy_after_s = healthy_after_s
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        for child in self._children:
            self._spawn(child)

    def _spawn(self, child: _Child) -> None:
        child.restart_at = None
        child.started_at = time.monotonic()
        try:
            out = open(child.log_path, "ab")
        except OSError:  # the log cannot be opened (disk full): run the child without it
            out = open(os.devnull, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self._env)
        child.proc = subprocess.Popen(
            child.spec.argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_child_setup,
            env=env,
            pass_fds=self._pass_fds,
        )
        out.close()
        log.info("started %s (pid %d)", child.spec.name, child.proc.pid)

    def check(self, report: Callable[[str], None]) -> bool:
        """Restart children that failed on their own; False once one has exhausted its restarts.

        A child that exits 0 finished its job (a finite source ran out) and is not restarted.
        """
        healthy = True
        now = time.monotonic()
        for child in self._children:
            if child.proc is None and child.restart_at is not None and now >= child.restart_at:
                self._spawn(child)
                continue
            code = child.proc.poll() if child.proc else None
            if code is None:
                continue
            child.exit_codes.append(code)
            child.proc = None
            if code == 0:
                report(f"{child.spec.name} finished")
                continue
            tail = _last_line(child.log_path)
            if now - child.started_at >= self._healthy_after_s:
                child.restarts = 0  # it had been running fine: a new fault, not the same one again
            if child.restarts >= self._max_restarts:
                used = f" and used up its {self._max_restarts} restarts" if self._max_restarts else ""
                report(f"{child.spec.name} exited with code {code}{used}: {tail}")
                healthy = False
                continue
            child.restarts += 1
            delay = backoff_s(child.restarts, first_s=1.0, max_s=self._backoff_max_s)
            child.restart_at = now + delay
            report(
                f"{child.spec.name} exited with code {code} ({tail}); "
                f"restart {child.restarts}/{self._max_restarts} in {delay:.0f} s"
            )
        return healthy

    def stop(
        self, report: Callable[[str], None] = lambda line: None, every_s: float = 15.0
    ) -> dict[str, Optional[int]]:
        """SIGINT each child in order and wait for it (SIGKILL after its timeout); return exit codes.

        `report` gets a line when each child has stopped and every `every_s` while one is still stopping (a trainer's
        final checkpoint, export and probe can take minutes on a loaded machine)."""
        codes: dict[str, Optional[int]] = {}
        for child in self._children:
            proc = child.proc
            if proc is None:
                codes[child.spec.name] = child.exit_codes[-1] if child.exit_codes else None
                continue
            if proc.poll() is None:
                began = time.monotonic()
                proc.send_signal(signal.SIGINT)
                while proc.poll() is None:
                    waited = time.monotonic() - began
                    if waited >= child.spec.stop_timeout_s:
                        log.warning(
                            "%s did not stop within %.0f s; killing it", child.spec.name, child.spec.stop_timeout_s
                        )
                        proc.kill()
                        proc.wait()
                        break
                    try:
                        proc.wait(timeout=min(every_s, child.spec.stop_timeout_s - waited))
                    except subprocess.TimeoutExpired:
                        report(
                            f"  waiting for {child.spec.name} to stop ({time.monotonic() - began:.0f} s of at most "
                            f"{child.spec.stop_timeout_s:.0f} s)"
                        )
                report(f"  {child.spec.name} stopped after {time.monotonic() - began:.0f} s (exit {proc.returncode})")
            codes[child.spec.name] = proc.returncode
        return codes

    def finished_ok(self, name: str) -> bool:
        """Child `name` has exited 0 on its own (its job is done) and is not running again."""
        return any(
            child.spec.name == name and child.proc is None and child.restart_at is None and child.exit_codes[-1:] == [0]
            for child in self._children
        )

    @property
    def finished(self) -> bool:
        """Every child has exited and none is waiting for a restart."""
        return all(child.proc is None and child.restart_at is None for child in self._children)

    @property
    def restarts(self) -> dict[str, int]:
        return {child.spec.name: child.restarts for child in self._children}


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][-200:] if lines else ""


def read_status(run_dir: Path, since: Optional[float] = None) -> dict[str, dict]:
    """The newest `status-<name>.json` each child wrote (missing or half-written files are skipped; with
    `since`, a wall-clock time, so are files last written before it: a resumed run's previous session's)."""
    status: dict[str, dict] = {}
    for path in run_dir.glob("status-*.json"):
        try:
            if since is not None and path.stat().st_mtime < since:
                continue
            status[path.stem.removeprefix("status-")] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return status


# Parts of the status line left out first when the terminal is narrow, least telling first: what remains answers
# "is it learning, is it published, is the policy served" (step, loss, kNN, warnings, export, runtime).
DROP_FIRST = ("frames read ", "sent ", "in ", "buffer ", "emb std ")


def fit_line(line: str, columns: int) -> str:
    """`line` fitted to a terminal `columns` wide, less one (a line that wraps breaks its `\r` rewrite): " | " parts
    starting with a `DROP_FIRST` prefix are left out in that order until it fits; then the middle is cut, so the end
    (export, runtime version, swaps, calls) stays in view."""
    width = max(columns - 1, 20)
    parts = line.split(" | ")
    for prefix in DROP_FIRST:
        if len(" | ".join(parts)) <= width:
            break
        parts = [part for part in parts if not part.startswith(prefix)]
    line = " | ".join(parts)
    if len(line) <= width:
        return line
    tail = width // 2
    return line[: width - tail - 1] + "…" + line[-tail:]


def over_fps_cap_note(capture: dict) -> str:
    """ ", over fps cap N" when a live camera delivered frames faster than `capture.fps` kept them."""
    superseded = capture.get("superseded")
    return f", over fps cap {superseded}" if isinstance(superseded, int) and superseded > 0 else ""


def format_pipeline_status(status: dict[str, dict], elapsed_s: float, restarts: dict[str, int]) -> str:
    """One line a person can read at a glance: is data flowing, is it learning, did the policy swap."""
    cap, trn, rt = status.get("capture", {}), status.get("trainer", {}), status.get("runtime", {})
    exp = status.get("exporter", {})

    def num(d: dict, key: str, fmt: str = "{:.0f}") -> str:
        value = d.get(key)
        return fmt.format(value) if isinstance(value, (int, float)) else "-"

    parts = [
        f"t={elapsed_s:5.0f}s",
        f"frames read {num(cap, 'frames_read')} kept {num(cap, 'kept')} (novelty skipped "
        f"{num(cap, 'skipped_novelty')}{over_fps_cap_note(cap)})",
        f"sent {num(cap, 'sent')} dropped {num(cap, 'dropped')}",
        *_source_notes(cap.get("sources")),
        f"in {num(trn, 'frames_in_session' if 'frames_in_session' in trn else 'frames_in')}",
        f"buffer {num(trn, 'buffer_size')} ({num(trn, 'buffer_fill', '{:.0%}')})",
        f"step {num(trn, 'step')} ({num(trn, 'steps_per_s', '{:.2f}')}/s)",
        f"loss {num(trn, 'loss', '{:.3f}')}",
        f"emb std {num(trn, 'embedding_std', '{:.3f}')}",
        *_probe_note(trn),
        *(f"WARNING {w}" for w in trn.get("warnings") or [] if isinstance(w, str)),  # trainer/health.py
        f"export v{num(exp, 'last_export_version')} (refused {num(exp, 'refusals')}{_drift_note(exp)})",
        f"runtime v{num(rt, 'version')} swaps {num(rt, 'swaps')} calls {num(rt, 'calls')}",
    ]
    dead = {name: n for name, n in restarts.items() if n}
    if dead:
        parts.append("restarts " + ",".join(f"{k}={v}" for k, v in dead.items()))
    return " | ".join(parts)


def _probe_note(trainer: dict) -> list[str]:
    """ "kNN 0.41 (init 0.31)": the trainer's last online probe (train.probe_data) next to its random-init
    twin, from status-trainer.json; no part before the first probe has finished."""
    knn, init = trainer.get("probe_knn"), trainer.get("probe_random_knn")
    if not isinstance(knn, (int, float)):
        return []
    return [f"kNN {knn:.2f}" + (f" (init {init:.2f})" if isinstance(init, (int, float)) else "")]


def _drift_note(exporter: dict) -> str:
    """ ", CKA 0.998 prev, 0.861 v1" from status-exporter.json (export.drift_gate.drift_record fields), or ""."""
    text = drift_text({**exporter, "last_export_version": None})
    return f", {text}" if text else ""


def _source_notes(sources: object) -> list[str]:
    """The capture sources that are not delivering, from status-capture.json's "sources" (one part
    for all of them, none when all are fine): "waiting for camera 0", "stream '...' stale 12 s",
    "camera 1 lost, reopening". States: agent/robot/capture.py, `SourceReader.state`."""
    if not isinstance(sources, list):
        return []
    notes = []
    for source in sources:
        if not isinstance(source, dict):
            continue
        name, state, age = source.get("name", "?"), source.get("state"), source.get("last_frame_age_s")
        if state == "waiting":
            notes.append(f"waiting for {name}")
        elif state == "stale":
            notes.append(f"{name} stale" + (f" {age:.0f} s" if isinstance(age, (int, float)) else ""))
        elif state == "lost":
            notes.append(f"{name} lost, reopening")
    return [", ".join(notes)] if notes else []


def supervise(
    sup: Supervisor,
    run_dir: Path,
    *,
    duration_s: Optional[float],
    status_every_s: float,
    stop: StopFlag,
    finish_with: Optional[str] = None,
    out=sys.stderr,
    since: Optional[float] = None,
) -> int:
    """Run until the duration passes, a signal arrives, a child fails for good, or child `finish_with`
    has finished its job (exit 0: the trainer, once every finite source has ended); then stop in order.
    `since`: the status line ignores status files older than this wall-clock time (`read_status`)."""
    start = time.monotonic()
    tty = out.isatty()
    failed = False
    try:
        sup.start()  # inside the try: a child that fails to spawn still gets its started siblings stopped
        while not stop.wait(status_every_s):
            elapsed = time.monotonic() - start
            if not sup.check(lambda msg: print(("\n" if tty else "") + msg, file=out, flush=True)):
                failed = True
                break
            if finish_with is not None and sup.finished_ok(finish_with):
                print(f"{finish_with} has finished: its sources have ended", file=out, flush=True)
                break
            line = format_pipeline_status(read_status(run_dir, since), elapsed, sup.restarts)
            print(
                ("\r" + fit_line(line, shutil.get_terminal_size().columns)) if tty else line,
                end="" if tty else "\n",
                file=out,
                flush=True,
            )
            if duration_s is not None and elapsed >= duration_s:
                break
    finally:
        if tty:
            print(file=out)
        print(
            "stopping: capture, then trainer (final checkpoint), exporter (final export), runtime", file=out, flush=True
        )
        codes = sup.stop(lambda line: print(line, file=out, flush=True))
    print("exit codes: " + ", ".join(f"{k}={v}" for k, v in codes.items()), file=out, flush=True)
    print(
        format_pipeline_status(read_status(run_dir, since), time.monotonic() - start, sup.restarts),
        file=out,
        flush=True,
    )
    return 1 if failed else 0
