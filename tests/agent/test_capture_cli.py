"""`byol-agent capture` as a real subprocess: one-line errors, and it keeps running with no trainer."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import zmq

from tests.agent.mjpeg_server import MjpegServer
from tests.conftest import REPO, free_tcp_endpoint

pytestmark = pytest.mark.slow


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
        "missing": (
            "--source",
            str(video.parent / "missing.mp4"),
            "--endpoint",
            free_tcp_endpoint(),
            "--publish",
            "none",
        ),
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


def test_a_camera_stream_absent_at_start_is_waited_for(tmp_path: Path) -> None:
    """A live source whose first connect failed made capture exit 2 at once (and `run`
    restart it until its budget was spent). Now it is waited for with the reconnect back-off, shown as
    waiting in the status file, and read once it appears."""
    port = int(free_tcp_endpoint().rsplit(":", 1)[1])
    url = f"http://127.0.0.1:{port}/video.mjpg"
    status_path = tmp_path / "status-capture.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = _capture_cmd(
        "--source",
        url,
        "--endpoint",
        free_tcp_endpoint(),
        "--publish",
        "none",
        "--status-file",
        str(status_path),
        "capture.height=16",
        "capture.width=16",
        "capture.reconnect_backoff_s=0.2",
        "capture.reconnect_max_backoff_s=0.5",
    )
    log_path = tmp_path / "capture.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)

    def sources() -> list[dict]:
        assert proc.poll() is None, f"capture exited ({proc.returncode}): {log_path.read_text()[-2000:]}"
        try:
            return json.loads(status_path.read_text()).get("sources", [])
        except (OSError, ValueError):
            return []

    def wait_until(predicate, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert time.monotonic() < deadline, log_path.read_text()[-2000:]
            time.sleep(0.1)

    try:
        wait_until(lambda: [(s["name"], s["state"]) for s in sources()] == [(f"stream {url!r}", "waiting")])
        time.sleep(1.0)  # a few refused connects later it is still there
        assert [s["state"] for s in sources()] == ["waiting"]
        with MjpegServer(port=port) as server:
            wait_until(lambda: [s["state"] for s in sources()] == ["ok"] and sources()[0]["frames_read"] > 0)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=20) == 0, log_path.read_text()[-2000:]
        assert server.connections >= 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = log_path.read_text()
    assert "waiting for it" in log and "Traceback" not in log, log[-2000:]


def test_capture_keeps_running_and_counts_drops_with_no_trainer() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = _capture_cmd(
        "--source",
        "demo",
        "--endpoint",
        free_tcp_endpoint(),
        "--publish",
        "none",
        "--fps",
        "30",
        "--stats-every",
        "0.2",
        "capture.height=32",
        "capture.width=32",
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


def test_endpoint_twice_feeds_two_ranks_every_frame_once_and_each_an_end(tmp_path: Path) -> None:
    """`--endpoint A --endpoint B` (one PULL per trainer rank) spreads a recording over both
    ranks, losslessly, and each rank gets the camera's end-of-stream after its frames."""
    import cv2
    import numpy as np

    from agent.core.wire import EndOfStream
    from agent.robot.transport import FrameReceiver

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (32, 32))
    for i in range(30):
        writer.write(np.full((32, 32, 3), 8 * i, np.uint8))
    writer.release()
    a, b = free_tcp_endpoint(), free_tcp_endpoint()
    got: dict[str, list] = {a: [], b: []}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = _capture_cmd(
        "--source",
        str(video),
        "--endpoint",
        a,
        "--endpoint",
        b,
        "--publish",
        "none",
        "--pace",
        "asap",
        "capture.height=16",
        "capture.width=16",
        "wire.send_hwm=2",
    )
    with FrameReceiver(a, hwm=2) as ra, FrameReceiver(b, hwm=2) as rb:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while not all(got[e] and isinstance(got[e][-1], EndOfStream) for e in (a, b)):
                assert time.monotonic() < deadline and proc.poll() in (None, 0), (proc.poll(), got)
                for endpoint, receiver in ((a, ra), (b, rb)):
                    message = receiver.recv(0.02)
                    if message is not None:
                        got[endpoint].append(message)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err[-2000:]
    seqs = {e: [m.seq for m in got[e] if not isinstance(m, EndOfStream)] for e in (a, b)}
    assert sorted(seqs[a] + seqs[b]) == list(range(30))
    assert seqs[a] and seqs[b]  # both ranks were up from the start: each gets a share
    assert [m.seq for m in got[a] + got[b] if isinstance(m, EndOfStream)] == [30, 30]
    final = [line for line in err.splitlines() if "capture finished" in line]
    assert final and "sent=30 dropped=0" in final[0], err[-2000:]
    assert f"sent_per_endpoint={len(seqs[a])}/{len(seqs[b])}" in final[0]


@pytest.fixture(scope="module")
def endpoint_list_errors() -> Iterator[dict[str, subprocess.CompletedProcess]]:
    """Bad endpoint lists, started together; each must stop with one line before anything is sent."""
    good, other = free_tcp_endpoint(), free_tcp_endpoint()
    cases = {
        "duplicate": ("--endpoint", good, "--endpoint", good),
        "malformed": ("--endpoint", "tcp://127.0.0.1:notaport", "--endpoint", good),  # any place in the list
        "unresolvable": ("--endpoint", good, "--endpoint", "tcp://no-such-host.invalid:5555", "--endpoint", other),
        "empty": ("wire.endpoints=[]",),
        "config_duplicate": (f"wire.endpoints=[{good}, {good}]",),
    }
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = {
        name: subprocess.Popen(
            _capture_cmd("--source", "demo", "--publish", "none", *args),
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, args in cases.items()
    }
    try:
        results = {}
        for name, proc in procs.items():
            try:
                out, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:  # it is capturing instead of refusing
                proc.kill()
                out, err = proc.communicate()
            results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        yield {**results, "good": good}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()


@pytest.mark.parametrize(
    "case, needles",
    [
        ("duplicate", ["listed more than once"]),
        ("malformed", ["malformed endpoint", "tcp://127.0.0.1:notaport"]),
        ("unresolvable", ["cannot resolve host", "no-such-host.invalid"]),
        ("empty", ["wire.endpoints", "empty list"]),
        ("config_duplicate", ["listed more than once"]),
    ],
)
def test_bad_endpoint_lists_are_one_line_errors(endpoint_list_errors: dict, case: str, needles: list[str]) -> None:
    _assert_one_line_error(endpoint_list_errors[case], *needles)
    if case in ("duplicate", "config_duplicate"):
        assert endpoint_list_errors["good"] in endpoint_list_errors[case].stderr
