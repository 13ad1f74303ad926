"""End to end over real sockets and real processes: capture → trainer, kill -9 and resume, garbage on
the wire, replay of a real video file, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import cv2
import pytest
import zmq

from agent.core.demo_scene import DemoScene
from tests.conftest import REPO, TINY_MODEL, free_tcp_endpoint
from trainer.checkpoint import list_checkpoints, read_checkpoint

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "agent.cli"]
TINY = [
    *TINY_MODEL,
    "train.threads=1",
    "train.lr=1e-3",
    "buffer.min_fill=16",
    "buffer.capacity_frames=128",
    "capture.height=32",
    "capture.width=32",
    "capture.novelty_threshold=0",
    "export.every_steps=null",
    "export.every_seconds=null",
]


def start(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_for(what: str, predicate: Callable[[], bool], procs: list[subprocess.Popen], timeout_s: float = 90.0) -> None:
    """Poll `predicate` until true; fail early (with the reason) if a process we rely on died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        dead = [p.args[3] for p in procs if p.poll() is not None]
        assert not dead, f"{dead} exited while waiting for {what}"
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def status(run: Path) -> dict:
    try:
        return json.loads((run / "status-trainer.json").read_text())
    except (OSError, ValueError):
        return {}


def training_lines(rows: list[dict]) -> list[dict]:
    return [r for r in rows if "event" not in r and r.get("loss") is not None]


def test_trainer_survives_kill9_garbage_and_a_corrupt_checkpoint_while_capture_runs_on(tmp_path):
    ep, run = free_tcp_endpoint(), tmp_path / "run"
    capture = start(
        [*CLI, "capture", "--source", "demo", "--endpoint", ep, "--publish", "none", "--fps", "60", *TINY],
        tmp_path / "capture.log",
    )
    train = [
        *CLI,
        "train",
        "--endpoint",
        ep,
        "--run-dir",
        str(run),
        *TINY,
        "train.checkpoint_every=15",
        "train.metrics_every=3",
    ]
    trainer = None
    try:
        trainer = start(train, tmp_path / "train1.log")
        wait_for("three checkpoints", lambda: len(list_checkpoints(run)) >= 3, [capture, trainer])

        # garbage on the trainer's endpoint: counted and dropped, ingestion goes on
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.connect(ep)
        frames_before = status(run).get("frames_in", 0)
        for junk in (b"", b"\x00" * 7, b"BYOF" + os.urandom(100), os.urandom(5000)):
            push.send(junk)
        push.close(linger=2000)
        ctx.term()
        wait_for(
            "garbage counted and frames still flowing",
            lambda: (
                status(run).get("frames_malformed", 0) >= 4 and status(run).get("frames_in", 0) > frames_before + 10
            ),
            [capture, trainer],
        )

        trainer.send_signal(signal.SIGKILL)
        trainer.wait(10)
        before = training_lines(metrics(run))
        initial_loss, last_loss = before[0]["loss"], before[-1]["loss"]
        assert last_loss < initial_loss - 0.3, (initial_loss, last_loss)  # it had learned something

        # power cut during the newest checkpoint: the restart must skip it and take the one before
        (newest_step, newest), (resume_step, previous) = list_checkpoints(run)[:2]
        newest.write_bytes(newest.read_bytes()[:1000])
        second = subprocess.run(
            [*train, "--max-steps", str(resume_step + 9)], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert second.returncode == 0, second.stderr[-2000:]
        assert f"skipping checkpoint: {newest.name}" in second.stderr

        start_event = [r for r in metrics(run) if r.get("event") == "start"][-1]
        assert start_event["step"] == resume_step and start_event["resumed_from"].endswith(previous.name)
        resumed = [r for r in training_lines(metrics(run)) if r["time"] > start_event["time"]]
        assert [r["step"] for r in resumed] == [resume_step + 3, resume_step + 6, resume_step + 9]
        # the loss carries on from where training was, not from the untrained initial value
        assert resumed[0]["loss"] < initial_loss - 0.3, (initial_loss, resumed[0]["loss"])
        final, resumed_from = read_checkpoint(list_checkpoints(run)[0][1]), read_checkpoint(previous)
        assert final["step"] == resume_step + 9
        assert final["counters"]["frames_in"] > resumed_from["counters"]["frames_in"]  # counters carry on
        assert newest.with_name(newest.name + ".corrupt").exists()  # set aside, no longer "newest"

        assert capture.poll() is None, "capture must keep running while no trainer listens"
    finally:
        for proc in (capture, trainer):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.wait(15)
    assert capture.returncode == 0


def write_video(path: Path, frames: int, size: int = 48) -> None:
    scene = DemoScene(size, size, seed=3)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (size, size))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(cv2.cvtColor(scene.render(0.1 * i), cv2.COLOR_RGB2BGR))
    writer.release()


def test_replay_of_a_video_trains_until_it_is_used_up_and_exports(tmp_path):
    video, run = tmp_path / "clip.avi", tmp_path / "run"
    write_video(video, 40)
    done = subprocess.run(
        [
            *CLI,
            "replay",
            "--run-dir",
            str(run),
            "--pace",
            "asap",
            str(video),
            *TINY,
            "train.replay_ratio=2",
            "train.checkpoint_every=1000",
            "export.every_steps=1000",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    final = read_checkpoint(list_checkpoints(run)[0][1])
    # every frame of the video arrived once, and training used exactly its replay budget
    assert final["counters"]["frames_in"] == 40
    assert final["step"] == 2 * 40
    assert (run / "logs" / "replay-capture.log").exists()
    assert (run / "capture.jsonl").exists() and (run / "status-capture.json").exists()  # what `report` reads
    exports = [r for r in metrics(run) if r.get("event", "").startswith("export")]
    assert exports == [{"time": exports[0]["time"], "event": "export", "step": 80, "version": 1}], exports
    assert (run / "exports" / "LATEST").exists()


def test_a_resumed_replay_continues_where_it_stopped_instead_of_reading_again(tmp_path):
    """A rerun re-read every video from the start (frames in 128 -> 256, a growing step target)."""
    video, run = tmp_path / "clip.avi", tmp_path / "run"
    write_video(video, 40)
    argv = [
        *CLI,
        "replay",
        "--run-dir",
        str(run),
        "--pace",
        "asap",
        str(video),
        *TINY,
        "train.replay_ratio=2",
        "train.checkpoint_every=1000",
        "export.every_steps=null",
        "export.every_seconds=null",
    ]
    first = subprocess.run([*argv, "--max-steps", "50"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr[-2000:]
    stopped = read_checkpoint(list_checkpoints(run)[0][1])
    assert stopped["step"] == 50 and 0 < stopped["counters"]["frames_in"] < 40
    second = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-2000:]
    done = stopped["counters"]["frames_in"]
    assert (
        f"{40 - done} frames in 1 recording(s) left, resuming after {done} already trained on (step 50)"
        in second.stderr
    )
    assert f"updates per frame = about {2 * 40 - 50} steps (~" in second.stderr  # what remains, at the first run's rate
    final = read_checkpoint(list_checkpoints(run)[0][1])
    assert final["counters"]["frames_in"] == 40 and final["counters"]["frames_per_camera"] == {0: 40}
    assert final["step"] == 2 * 40  # the same budget as one uninterrupted replay


def test_unreadable_video_and_bad_endpoint_are_one_line_errors(tmp_path):
    fake = tmp_path / "notes.avi"
    fake.write_bytes(b"this is not a video" * 10)
    bad = subprocess.run(
        [*CLI, "replay", str(fake), "--run-dir", str(tmp_path / "r1")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "notes.avi" in bad.stderr, bad.stderr
    assert not (tmp_path / "r1").exists()  # nothing started

    endpoint = subprocess.run(
        [*CLI, "train", "--endpoint", "tcp://nowhere", "--run-dir", str(tmp_path / "r2")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert endpoint.returncode == 2
    assert endpoint.stderr.strip().count("\n") == 0 and "tcp://nowhere" in endpoint.stderr, endpoint.stderr
