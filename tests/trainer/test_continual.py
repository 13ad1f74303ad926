"""Continual trainer in-process, fed over a real loopback socket: resume, NaN handling, min-redundancy."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from agent.core.config import Config, load_config
from agent.core.demo_scene import DemoScene
from agent.core.wire import Frame
from agent.pipeline import build_trainer
from agent.robot.transport import FrameSender
from tests.conftest import TINY_MODEL, free_tcp_endpoint
from trainer.checkpoint import list_checkpoints, read_checkpoint
from trainer.continual import ContinualTrainer, TrainingDiverged

TINY = [
    "wire.publish=null",
    *TINY_MODEL,
    "train.threads=1",
    "train.metrics_every=1",
    "buffer.min_fill=16",
    "buffer.capacity_frames=64",
    "capture.height=32",
    "capture.width=32",
    "export.every_steps=null",
    "export.every_seconds=null",
]


def tiny_config(endpoint: str, *overrides: str) -> Config:
    return load_config(None, [*TINY, f"wire.endpoint={endpoint}", *overrides])


class Feeder:
    """Streams demo-scene frames to the trainer over a real PUSH socket until stopped."""

    def __init__(self, endpoint: str, size: int = 32) -> None:
        self._endpoint, self._size = endpoint, size
        self._stop = threading.Event()
        self._error: list[BaseException] = []
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> "Feeder":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        if self._error:
            raise self._error[0]

    def _run(self) -> None:
        try:
            scene = DemoScene(self._size, self._size, seed=1)
            with FrameSender(self._endpoint, hwm=64) as sender:
                seq = 0
                while not self._stop.wait(0.002):
                    image = scene.render(0.05 * seq)
                    sender.send(Frame(camera_id=0, seq=seq, timestamp=0.05 * seq, image=image))
                    seq += 1
        except BaseException as exc:  # re-raised on the test thread in __exit__
            self._error.append(exc)


def run_trainer(cfg: Config, run_dir: Path) -> ContinualTrainer:
    trainer = build_trainer(cfg, run_dir)
    with Feeder(cfg.wire.endpoint):
        trainer.run(threading.Event())
    return trainer


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point())


# min-redundancy eviction (embeds with the target), temporal positives, and the buffer saved with checkpoints
BUFFER = [
    "buffer.policy=min_redundancy",
    "buffer.embed_batch=8",
    "buffer.temporal_positives=true",
    "train.save_buffer=true",
]


@pytest.mark.slow
def test_resume_continues_exactly_and_a_diverging_run_restores_its_last_good_state(tmp_path):
    ep = free_tcp_endpoint()
    first = run_trainer(
        tiny_config(ep, "train.max_steps=6", "train.checkpoint_every=3", "train.lr=1e-3", *BUFFER), tmp_path
    )
    assert [s for s, _ in list_checkpoints(tmp_path)] == [6, 3]
    saved = read_checkpoint(list_checkpoints(tmp_path)[0][1])
    assert saved["counters"]["frames_in"] >= 16 and saved["config"]["model"]["encoder"] == "tiny_cnn"
    assert saved["buffer"]["images"].shape[1:] == (32, 32, 3) and first.buffer.stats()["embedded"] > 0
    assert saved["learner"]["_extra_state"]["step"] == 6 == first.step
    lines = [r for r in records(tmp_path) if "loss" in r and "event" not in r]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6] and all(r["lr"] == 1e-3 for r in lines)
    assert {"embedding_std", "tau", "img_per_s", "frames_in", "frames_dropped", "buffer_fill"} <= set(lines[-1])

    # Same run, absurd learning rate (the config wins over the checkpoint's): the first update
    # blows the weights up, the next losses are non-finite for real, and the trainer restores
    # the step-6 state until it gives up with a one-line error.
    ep = free_tcp_endpoint()
    diverging = tiny_config(ep, "train.max_steps=40", "train.lr=1e30", "train.nan_tolerance=2", *BUFFER)
    trainer = build_trainer(diverging, tmp_path)
    assert trainer.step == 6 and trainer.optimizer.param_groups[0]["lr"] == 1e30
    assert len(trainer.buffer) == len(saved["buffer"]["images"]) and trainer.buffer.stats()["embedded"] > 0
    with pytest.raises(TrainingDiverged, match="lower train.lr"):
        with Feeder(ep):
            trainer.run(threading.Event())
    restores = [r for r in records(tmp_path) if r.get("event") == "restore"]
    assert [(r["from_step"], r["step"]) for r in restores] == [(7, 6)] * 3
    assert trainer.counters.nan_skips == 6 and trainer.step == 6
    assert finite(trainer.learner.state_dict())
    assert [s for s, _ in list_checkpoints(tmp_path)][0] == 6  # nothing non-finite was checkpointed


def test_a_skipped_non_finite_step_leaves_batchnorm_statistics_as_they_were(tmp_path):
    # A NaN weight makes the forward pass fold NaN into BatchNorm's running statistics before the
    # loss is seen; the skipped step must put them back, or every later export would emit NaN.
    trainer = build_trainer(tiny_config(free_tcp_endpoint()), tmp_path)
    scene = DemoScene(32, 32, seed=0)
    for seq in range(trainer.cfg.buffer.min_fill):
        trainer.buffer.add(Frame(camera_id=0, seq=seq, timestamp=0.05 * seq, image=scene.render(0.05 * seq)))
    assert trainer._train_step() is not None  # a healthy step moves the statistics
    stats = {k: v.clone() for k, v in trainer.learner.state_dict().items() if "running_" in k}
    assert stats
    with torch.no_grad():
        next(trainer.learner.net.parameters()).fill_(float("nan"))
    assert trainer._train_step() is None and trainer.counters.nan_skips == 1
    after = trainer.learner.state_dict()
    assert all(torch.equal(after[k], v) for k, v in stats.items())
