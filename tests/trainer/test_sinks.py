"""Every registered metrics sink (trainer/sinks/) meets one contract: it takes every record kind the
trainer writes and image grids, closes twice, and through `MetricsWriter` a full disk or an
unwritable target costs records, never the run, and writing resumes once the fault is gone. Real
files, read back with each format's own reader; the full disk is a real tmpfs where this user may
mount one, else a file-size limit (tests/disk.py)."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from agent.core.errors import ConfigError
from tests.disk import FillableDisk
from trainer.feature_probes import EvalResult
from trainer.metrics import MetricsWriter
from trainer.run_records import read_metrics
from trainer.run_state import Counters
from trainer.sinks import SINKS, open_sink, sink_class, sink_names


def _window(step: int) -> dict:
    """A training-window record as trainer/run_monitor.py writes it (one and two cameras, two ranks)."""
    return {
        "time": 1.7e9 + step,
        "step": step,
        "loss": 1.5 - 0.01 * step,
        "embedding_std": 0.12,
        "lr": 1e-3,
        "tau": 0.99,
        "steps_per_s": 3.0,
        "img_per_s": 384.0,
        "frames_in": 100 * step,
        "frames_in_session": 10,
        "frames_malformed": 0,
        "frames_dropped": 1,
        "connections_refused": 0,
        "buffer_fill": 0.5,
        "buffer_size": 64,
        "nan_skips": 0,
        "restores": 0,
        "last_export_version": None,
        "buffer_evictions": 3,
        "buffer_age_mean_s": 1.5,
        "buffer_age_max_s": float("nan"),
        "buffer_per_camera": {"0": 40, "1": 24},
        "frames_per_camera": {0: 60 * step, 1: 40 * step},
        "world_size": 2,
        "frames_in_per_rank": [50, 50],
        "buffer_fill_per_rank": [0.5, 0.25],
    }


EVAL = EvalResult(
    encoder="target at step 2",
    version=1,
    step=2,
    data="digits",
    k=20,
    n_train=100,
    n_test=50,
    num_classes=10,
    feature_dim=64,
    knn_top1=0.8,
    linear_top1=0.85,
    random_knn_top1=0.7,
    random_linear_top1=None,
    seed=0,
    seconds=0.5,
    notes=["online monitor"],
).to_event()
RECORDS = [
    {"event": "start", "step": 0, "resumed_from": None, "device": "cpu", "endpoint": "tcp://127.0.0.1:5555"},
    _window(1),
    EVAL,
    {"event": "probe_failed", "step": 2, "error": "boom"},
    {"event": "export", "step": 2, "version": 1},
    {"event": "export", "step": 2, "version": 2, "r2": 0.97, "cka_prev": 0.99, "cka_pinned": {"1": 0.95}},
    {"event": "export_refused", "step": 2, "reason": "collapsed"},
    {"event": "export_failed", "step": 2, "reason": "disk full"},
    {"event": "checkpoint_failed", "step": 2, "reason": "disk full"},
    {"event": "restore", "from_step": 3, "step": 2, "restores": 1, "nan_skips": 5},
    _window(2),
    {"event": "stop", "step": 2, **asdict(Counters(frames_in=200, frames_per_camera={0: 120, 1: 80}))},
]
GRID = np.random.default_rng(0).integers(0, 256, (34, 100, 3), dtype=np.uint8)


def _jsonl_steps(run_dir: Path) -> list[int]:
    return [row["step"] for row in read_metrics(run_dir).train]  # `report`'s reader: skips a torn line


def _tensorboard_steps(run_dir: Path) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return [e.step for e in events.Scalars("train/loss")] if "train/loss" in events.Tags()["scalars"] else []


# How each sink's output is read back (its format's own reader): a new sink adds its reader here.
READERS: dict[str, Callable[[Path], list[int]]] = {"jsonl": _jsonl_steps, "tensorboard": _tensorboard_steps}


@pytest.fixture(params=sink_names())
def name(request: pytest.FixtureRequest) -> str:
    if request.param not in READERS:
        pytest.fail(f"sink {request.param!r} has no reader in tests/trainer/test_sinks.py READERS")
    return request.param


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_sink_takes_every_record_kind_the_trainer_writes_and_closes_twice(name: str, tmp_path: Path) -> None:
    sink = open_sink(name, tmp_path)
    for record in RECORDS:
        sink.write(record)
    sink.image("views", 2, GRID)
    sink.close()
    sink.close()
    assert READERS[name](tmp_path) == [1, 2]
    assert (tmp_path / sink_class(name).target).exists()


def test_an_unwritable_target_costs_records_not_the_run(name: str, tmp_path: Path, caplog, capfd) -> None:
    # A symlink to itself cannot be opened as a file nor made a folder, by root either.
    target = tmp_path / sink_class(name).target
    target.symlink_to(target.name)
    clock = Clock()
    writer = MetricsWriter(tmp_path, sinks=[name], clock=clock)
    with caplog.at_level(logging.INFO, logger="trainer.metrics"):
        for step in range(1, 4):
            writer.log(_window(step))
            writer.image("views", step, GRID)
        assert f"not written to sink {name!r}" in caplog.text
        target.unlink()  # the fault is gone: after the back-off the sink is reopened and writes again
        clock.now += 60
        writer.log(_window(4))
        writer.close()
        writer.close()
    assert "writing again" in caplog.text
    assert READERS[name](tmp_path) == [4]
    assert "Traceback" not in capfd.readouterr().err


@pytest.fixture
def disk(tmp_path: Path):
    fillable = FillableDisk(tmp_path / "mnt", size_mb=8)
    yield fillable
    fillable.free(os.getpid())
    fillable.close()


def test_a_full_disk_costs_records_not_the_run(name: str, disk: FillableDisk, caplog, capfd) -> None:
    run_dir, clock = disk.path / "run", Clock()
    writer = MetricsWriter(run_dir, sinks=[name], clock=clock)
    writer.log(_window(1))
    with caplog.at_level(logging.INFO, logger="trainer.metrics"):
        disk.fill(os.getpid())
        try:
            for step in range(2, 200):  # the file's last allocated block may still take a record or two
                writer.log(_window(step))
                writer.image("views", step, GRID)
                if f"not written to sink {name!r}" in caplog.text:
                    break
        finally:
            disk.free(os.getpid())
        assert f"not written to sink {name!r}" in caplog.text, disk.kind
        clock.now += 60
        writer.log(_window(1000))
        writer.close()
        writer.close()
    assert "writing again" in caplog.text
    steps = READERS[name](run_dir)
    assert steps[0] == 1 and steps[-1] == 1000
    assert "Traceback" not in capfd.readouterr().err


def test_unknown_and_missing_sinks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    with pytest.raises(ConfigError, match="metrics.sinks.*'nope'.*registered: jsonl, tensorboard"):
        MetricsWriter(tmp_path, sinks=["jsonl", "nope"])
    # a sink whose package is not installed is off for the run, said once; the others go on
    monkeypatch.setitem(SINKS, "absent", "no_such_package_for_byol_agent:Sink")
    writer = MetricsWriter(tmp_path, sinks=["absent", "jsonl"])
    for step in (1, 2):
        writer.log(_window(step))
    writer.close()
    assert caplog.text.count("metrics sink 'absent' off for this run") == 1
    assert _jsonl_steps(tmp_path) == [1, 2]
