"""`byol-agent capture` as a real subprocess: one-line errors, and it keeps running with no trainer."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from typing import Iterator

import pytest
import zmq

from tests.conftest import REPO, free_tcp_endpoint


def _capture_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent.cli", "capture", *args]


@pytest.fixture(scope="module")
def error_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, subprocess.CompletedProcess]]:
    """The failing invocations, started together (each pays the CLI's start-up once, in parallel)."""
    video = tmp_path_factory.mktemp("cli") / "corrupt.mp4"
    video.write_bytes(os.urandom(20000))
    junk = video.parent / "junk-images"
    junk.mkdir()
    for name in ("a.jpg", "b.png"):
        (junk / name).write_bytes(os.urandom(300))
    ctx = zmq.Context()
    holder = ctx.socket(zmq.PUB)
    taken = free_tcp_endpoint()
    holder.bind(taken)
    cases = {
        "video": ("--source", str(video), "--endpoint", free_tcp_endpoint(), "--publish", "none"),
        "endpoint": ("--source", "demo", "--endpoint", "tcp://127.0.0.1:notaport", "--publish", "none"),
        "publish": ("--source", "demo", "--endpoint", free_tcp_endpoint(), "--publish", taken),
        "junk": ("--source", str(junk), "--endpoint", free_tcp_endpoint(), "--publish", "none"),
        "missing": ("--source", str(video.parent / "missing.mp4"), "--endpoint", free_tcp_endpoint(), "--publish", "none"),
    }
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = {
        name: subprocess.Popen(
            _capture_cmd(*args), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, args in cases.items()
    }
    try:
        results = {}
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=120)
            results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        yield {**results, "video_path": str(video), "taken": taken}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
        holder.close(linger=0)
        ctx.term()


def _assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("byol-agent capture: error: ")
    for needle in needles:
        assert needle in lines[0]


def test_unreadable_video_is_a_one_line_error(error_runs: dict) -> None:
    _assert_one_line_error(error_runs["video"], error_runs["video_path"], "cannot be decoded")


def test_malformed_endpoint_is_a_one_line_error(error_runs: dict) -> None:
    _assert_one_line_error(error_runs["endpoint"], "tcp://127.0.0.1:notaport", "malformed endpoint")


def test_unbindable_publish_endpoint_is_a_one_line_error(error_runs: dict) -> None:
    _assert_one_line_error(error_runs["publish"], f"cannot bind {error_runs['taken']}", "in use")


def test_a_folder_of_only_unreadable_images_is_a_one_line_error(error_runs: dict) -> None:
    """It used to exit 0 after sending nothing."""
    _assert_one_line_error(error_runs["junk"], "junk-images", "none of its 2 files could be read")


def test_a_missing_video_is_a_one_line_error(error_runs: dict) -> None:
    _assert_one_line_error(error_runs["missing"], "missing.mp4", "does not exist")


def test_capture_keeps_running_and_counts_drops_with_no_trainer() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = _capture_cmd(
        "--source", "demo", "--endpoint", free_tcp_endpoint(), "--publish", "none", "--fps", "30",
        "--stats-every", "0.2", "capture.height=32", "capture.width=32",
    )
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    try:
        drops = []
        while len(drops) < 3:  # several stats lines, each with more drops: it keeps going
            line = lines.get(timeout=30)
            match = re.search(r"capture: .*dropped=(\d+)", line)
            if match and int(match.group(1)) > (drops[-1] if drops else 0):
                drops.append(int(match.group(1)))
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    tail = []
    while not lines.empty():
        tail.append(lines.get())
    final = [line for line in tail if "capture finished" in line]
    assert final and re.search(r"sent=0 dropped=\d+", final[0])
