"""The continual trainer on 2 ranks: real torchrun, gloo on the CPU, each rank fed by its own ZeroMQ sender.

`byol-agent train --nproc 2` (the launcher re-runs the command under torchrun) trains two replay-buffer
shards in lockstep and is stopped with a Ctrl-C to the launcher; its checkpoints then resume in a
single process. Plain torchrun with `--max-restarts 1` starts from a single-process checkpoint,
survives a kill -9 of one rank (the group restarts from the last checkpoint) and stops on a SIGINT
sent to one rank. Tiny model and images, one thread per rank.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch

from agent.core.config import Config, load_config
from agent.core.demo_scene import DemoScene
from agent.core.wire import Frame
from agent.robot.transport import FrameSender
from tests.conftest import REPO, TINY_MODEL, free_tcp_endpoint
from trainer.checkpoint import list_checkpoints, read_checkpoint, weights_digest
from trainer.learner_factory import build_learner
from trainer.run_records import read_metrics

pytestmark = pytest.mark.slow

TINY = [
    *TINY_MODEL,
    "wire.publish=null",
    "train.threads=1",
    "train.metrics_every=1",
    "train.checkpoint_every=5",
    "train.keep_checkpoints=1000",
    "train.save_buffer=true",
    "buffer.min_fill=16",
    "buffer.capacity_frames=64",
    "capture.height=32",
    "capture.width=32",
    "export.every_steps=null",
    "export.every_seconds=null",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
RANK_PID = re.compile(r"rank (\d) of 2 \(pid (\d+)")
TIMEOUT_S = 120.0


class Feeders:
    """One real PUSH sender per endpoint, on threads: endpoint i streams demo frames as camera i."""

    def __init__(self, endpoints: list[str]) -> None:
        self._endpoints = endpoints
        self._stop = threading.Event()
        self._errors: list[BaseException] = []
        self._threads = [threading.Thread(target=self._feed, args=(ep, i)) for i, ep in enumerate(endpoints)]

    def __enter__(self) -> "Feeders":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        if self._errors:
            raise self._errors[0]

    def _feed(self, endpoint: str, camera: int) -> None:
        try:
            scene = DemoScene(32, 32, seed=camera)
            with FrameSender(endpoint, hwm=64) as sender:
                seq = 0
                while not self._stop.wait(0.01):
                    sender.send(Frame(camera_id=camera, seq=seq, timestamp=0.05 * seq, image=scene.render(0.05 * seq)))
                    seq += 1
        except BaseException as exc:  # re-raised on the test thread
            self._errors.append(exc)


def free_port_pair() -> str:
    """tcp://127.0.0.1:P where P and P + 1 were both free a moment ago (rank r binds P + r)."""
    for _ in range(50):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return f"tcp://127.0.0.1:{port}"
    raise RuntimeError("no two consecutive free ports")


def shifted(endpoint: str, by: int) -> str:
    head, _, port = endpoint.rpartition(":")
    return f"{head}:{int(port) + by}"


@contextmanager
def running(argv: list[str], log: Path) -> Iterator[subprocess.Popen]:
    """The command, its output in `log`; whatever of it still runs at the end (a failed test) is killed,
    the ranks too (torchrun starts them in sessions of their own, so they would outlive it)."""
    proc = subprocess.Popen(argv, cwd=REPO, env=ENV, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            for _, pid in rank_pids(log):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def wait_for(proc: subprocess.Popen, log: Path, what: str, ok: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not ok():
        if proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before {what}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


def finish(proc: subprocess.Popen, log: Path) -> int:
    try:
        return proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"did not stop:\n{log.read_text()[-4000:]}") from None


def steps_saved(run_dir: Path) -> list[int]:
    return sorted(step for step, _ in list_checkpoints(run_dir))


def rank_pids(log: Path) -> list[tuple[int, int]]:
    """(rank, pid) of every rank start the log shows, in order."""
    return [(int(r), int(p)) for r, p in RANK_PID.findall(log.read_text())]


def records(run_dir: Path) -> list[dict]:
    """metrics.jsonl's records, training lines then events (a line being written is left out: the reader skips
    it)."""
    if not (run_dir / "metrics.jsonl").exists():
        return []
    metrics = read_metrics(run_dir)
    return metrics.train + metrics.events


def starts(run_dir: Path) -> list[dict]:
    return [r for r in records(run_dir) if r.get("event") == "start"]


def training_lines(run_dir: Path) -> list[dict]:
    return [r for r in records(run_dir) if "event" not in r and "loss" in r]


def learner_digest(ckpt: dict) -> str:
    """Digest of the weights a checkpoint saved, from a learner rebuilt the way `export` rebuilds it."""
    cfg = Config.model_validate(ckpt["config"])
    learner = build_learner(cfg.model, cfg.train, "cpu", channels=cfg.capture.channels)
    learner.load_state_dict(ckpt["learner"])
    return weights_digest(learner)


@dataclass
class FleetRun:
    run_dir: Path
    log: str
    returncode: int
    endpoints: list[str]


@pytest.fixture(scope="module")
def nproc_run(tmp_path_factory: pytest.TempPathFactory) -> FleetRun:
    """`byol-agent train --nproc 2`, one sender per rank (wire.endpoints), stopped by Ctrl-C to the launcher."""
    base = tmp_path_factory.mktemp("nproc")
    run_dir, log = base / "run", base / "train.log"
    endpoints = [free_tcp_endpoint(), free_tcp_endpoint()]
    argv = [
        sys.executable,
        "-m",
        "agent.cli",
        "train",
        "--nproc",
        "2",
        "--run-dir",
        str(run_dir),
        *TINY,
        f"wire.endpoints=['{endpoints[0]}', '{endpoints[1]}']",
        "export.every_steps=1000",
    ]
    with Feeders(endpoints), running(argv, log) as proc:
        wait_for(proc, log, "the checkpoint of step 15", lambda: 15 in steps_saved(run_dir))
        proc.send_signal(signal.SIGINT)
        code = finish(proc, log)
    return FleetRun(run_dir, log.read_text(), code, endpoints)


def test_ctrl_c_stops_every_rank_with_one_final_checkpoint(nproc_run: FleetRun) -> None:
    assert nproc_run.returncode == 0, nproc_run.log[-4000:]
    assert "Traceback" not in nproc_run.log
    stop = [r for r in records(nproc_run.run_dir) if r.get("event") == "stop"]
    assert len(stop) == 1, "one stop record: rank 0's"
    assert steps_saved(nproc_run.run_dir)[-1] == stop[0]["step"] == training_lines(nproc_run.run_dir)[-1]["step"]


def test_both_shards_ingest_and_the_steps_advance_in_lockstep(nproc_run: FleetRun) -> None:
    lines = training_lines(nproc_run.run_dir)
    assert [line["step"] for line in lines] == list(range(1, len(lines) + 1)), "each step once, in order"
    last = lines[-1]
    assert last["world_size"] == 2 and min(last["frames_in_per_rank"]) > 0, last
    assert last["frames_in"] == sum(last["frames_in_per_rank"]) and set(last["frames_per_camera"]) == {"0", "1"}
    rated = [line for line in lines if line.get("steps_per_s")]
    assert rated and all(line["img_per_s"] == pytest.approx(line["steps_per_s"] * 8 * 2) for line in rated), (
        "images per second count a batch of 8 on each of the 2 ranks"
    )
    for step, path in list_checkpoints(nproc_run.run_dir):
        ckpt = read_checkpoint(path)
        parts = ckpt["ranks"]
        assert ckpt["world_size"] == 2 and [p["rank"] for p in parts] == [0, 1]
        assert [p["step"] for p in parts] == [step, step], "every rank took the checkpoint at the same step"
        for rank, part in enumerate(parts):  # each rank received only its own sender's camera
            assert set(part["counters"]["frames_per_camera"]) == {rank} and part["counters"]["frames_in"] > 0
            assert part["buffer"]["images"].shape[1:] == (32, 32, 3)
        assert ckpt["counters"]["frames_in"] == sum(p["counters"]["frames_in"] for p in parts)
        for rng in ("sampler", "views", "torch"):  # seeded seed + rank: the ranks draw different batches and views
            assert not torch.equal(parts[0]["rng"][rng], parts[1]["rng"][rng]), rng


def test_every_rank_holds_the_same_online_and_target_weights(nproc_run: FleetRun) -> None:
    seen = []
    for _, path in list_checkpoints(nproc_run.run_dir):
        ckpt = read_checkpoint(path)
        saved = learner_digest(ckpt)  # online, predictor and EMA target as rank 0 saved them
        assert [part["weights_sha256"] for part in ckpt["ranks"]] == [saved, saved]
        seen.append(saved)
    assert len(set(seen)) == len(seen), "the weights changed between checkpoints (the digest means something)"


def test_rank_0_alone_writes_one_checkpoint_per_cadence_and_exports(nproc_run: FleetRun) -> None:
    saved = steps_saved(nproc_run.run_dir)
    cadence = list(range(5, saved[-1] + 1, 5))
    assert saved == cadence + ([saved[-1]] if saved[-1] % 5 else []), saved  # every 5 steps, then the final one
    written = re.findall(r"(\[rank \d\]) trainer.run_state: checkpoint (ckpt-\d+\.pt)", nproc_run.log)
    assert written == [("[rank 0]", f"ckpt-{s:09d}.pt") for s in saved], "one write per checkpoint, by rank 0"
    started = starts(nproc_run.run_dir)
    assert len(started) == 1 and started[0]["world_size"] == 2
    assert sorted(p.name for p in nproc_run.run_dir.iterdir()) == [
        "checkpoints",
        "config.yaml",
        "exports",
        "metrics.jsonl",
        "run.lock",
        "status-trainer.json",
        "tensorboard",
    ]
    event_files = list((nproc_run.run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len({name.name.split(".")[-2] for name in event_files}) == 1, "one process writes TensorBoard: rank 0"
    published = sorted(p.name for p in (nproc_run.run_dir / "exports").glob("encoder-*.onnx"))
    assert published == ["encoder-000001.onnx"], "the final export, once: rank 0's"
    assert json.loads((nproc_run.run_dir / "status-trainer.json").read_text())["frames_in_per_rank"][1] > 0


def test_a_single_process_resumes_a_two_rank_checkpoint(nproc_run: FleetRun, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(nproc_run.run_dir, run_dir)
    final = read_checkpoint(list_checkpoints(run_dir)[0][1])
    log = tmp_path / "solo.log"
    argv = [
        sys.executable,
        "-m",
        "agent.cli",
        "train",
        "--run-dir",
        str(run_dir),
        "--max-steps",
        str(final["step"] + 3),
        *TINY,
        f"wire.endpoint={nproc_run.endpoints[0]}",
    ]
    with Feeders(nproc_run.endpoints[:1]), running(argv, log) as proc:
        code = finish(proc, log)
    out = log.read_text()
    assert code == 0, out[-4000:]
    assert (
        f"ckpt-{final['step']:09d}.pt was written by 2 rank(s) and this run has 1: weights, target, optimizer, "
        "step and the run's counters resume; each rank's RNG states and replay buffer start afresh"
    ) in out
    start_event = starts(run_dir)[-1]
    assert start_event["step"] == final["step"] and start_event["resumed_from"].endswith(f"ckpt-{final['step']:09d}.pt")
    resumed = read_checkpoint(list_checkpoints(run_dir)[0][1])
    assert resumed["step"] == final["step"] + 3 and "ranks" not in resumed, "a single process writes its own format"
    assert resumed["counters"]["frames_in"] > final["counters"]["frames_in"], "the run's frame count carried on"
    assert resumed["counters"]["frames_per_camera"][1] == final["counters"]["frames_per_camera"][1]


def test_torchrun_restarts_a_killed_rank_from_the_last_checkpoint_and_one_sigint_stops_all(tmp_path: Path) -> None:
    run_dir, log = tmp_path / "run", tmp_path / "torchrun.log"
    endpoint = free_port_pair()  # rank r binds its port + r
    endpoints = [endpoint, shifted(endpoint, 1)]

    # A single-process run leaves a checkpoint that the 2-rank run starts from.
    solo = load_config(None, [*TINY, f"wire.endpoint={endpoint}", "train.max_steps=5"])
    from agent.pipeline import build_trainer

    with Feeders(endpoints[:1]):
        build_trainer(solo, run_dir).run(threading.Event())
    assert steps_saved(run_dir) == [5]

    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "--max-restarts",
        "1",
        "-m",
        "agent.cli",
        "train",
        "--run-dir",
        str(run_dir),
        *TINY,
        f"wire.endpoint={endpoint}",
    ]
    with Feeders(endpoints), running(argv, log) as proc:
        wait_for(proc, log, "the checkpoint of step 20", lambda: 20 in steps_saved(run_dir))
        first = dict(rank_pids(log))
        os.kill(first[1], signal.SIGKILL)
        wait_for(proc, log, "the restarted ranks", lambda: len(rank_pids(log)) == 4 and len(starts(run_dir)) == 3)
        restarted = dict(rank_pids(log)[2:])
        resumed_at = starts(run_dir)[-1]["step"]
        wait_for(proc, log, "a checkpoint after the restart", lambda: steps_saved(run_dir)[-1] >= resumed_at + 10)
        os.kill(restarted[1], signal.SIGINT)  # one rank, not the one that writes
        code = finish(proc, log)
    out = log.read_text()
    assert code == 0, out[-4000:]

    started = starts(run_dir)
    assert [(s["step"], Path(s["resumed_from"]).name, s["world_size"]) for s in started[1:]] == [
        (5, "ckpt-000000005.pt", 2),
        (resumed_at, f"ckpt-{resumed_at:09d}.pt", 2),
    ]
    assert out.count("was written by 1 rank(s) and this run has 2") == 1, (
        "the restart resumed its own 2-rank checkpoint"
    )
    assert resumed_at >= 20 and resumed_at % 5 == 0
    # the surviving rank of the first group stopped with one line, no traceback
    assert re.search(r"byol-agent train: error: rank 0 of 2: .* failed, another rank is gone or stalled", out), out[
        -4000:
    ]
    assert "Traceback" not in out
    after = [line["step"] for line in training_lines(run_dir) if line["time"] > started[-1]["time"]]
    assert after[0] == resumed_at + 1 and after == list(range(resumed_at + 1, after[-1] + 1)), "steps continue"

    final = read_checkpoint(list_checkpoints(run_dir)[0][1])
    stop = [r for r in records(run_dir) if r.get("event") == "stop"][-1]
    assert final["step"] == stop["step"] == after[-1], "SIGINT to rank 1 ended both ranks with one final checkpoint"
    assert [p["step"] for p in final["ranks"]] == [final["step"]] * 2
    assert len({p["weights_sha256"] for p in final["ranks"]}) == 1
