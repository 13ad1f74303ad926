"""TensorBoard from a real continual run: the trainer (fed over a real loopback socket, exporting in
process, probing on digits) writes event files that TensorBoard's own reader reads back; a resumed
run continues the same curves; and the view grid draws from generators of its own."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agent.core.config import Config
from agent.core.demo_scene import DemoScene
from agent.core.wire import Frame
from tests.conftest import free_tcp_endpoint
from tests.trainer.test_continual import run_trainer, tiny_config
from trainer.continual import ContinualTrainer
from trainer.sinks.tensorboard import TENSORBOARD_DIR

RUN = [
    "train.lr=1e-3",
    "train.probe_data=digits",
    "train.probe_every=4",
    "eval.max_images=300",
    "export.every_steps=4",
    "export.calibration_frames=32",
    "metrics.images_every_steps=4",
    "metrics.image_frames=3",
]


def config(max_steps: int) -> Config:
    return tiny_config(free_tcp_endpoint(), f"train.max_steps={max_steps}", "train.checkpoint_every=4", *RUN)


def read_back(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir / TENSORBOARD_DIR), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def steps(events: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in events.Scalars(tag)]


@pytest.mark.slow
def test_a_run_writes_tensorboard_scalars_and_view_grids_and_a_resume_continues_them(tmp_path: Path) -> None:
    run_trainer(config(8), tmp_path)
    events = read_back(tmp_path)
    tags = set(events.Tags()["scalars"])
    wanted = {
        "train/loss",
        "train/lr",
        "train/tau",
        "train/embedding_std",
        "train/images_per_s",
        "buffer/fill",
        "frames/camera_0",
        "frames/received",
        "probe/knn",
        "probe/knn_random_init",
        "export/version",
        "export/r2_prev",
        "export/cka_prev",
    }
    assert wanted <= tags, wanted - tags
    assert steps(events, "train/loss") == list(range(1, 9))  # train.metrics_every=1
    loss = [e.value for e in events.Scalars("train/loss")]
    assert all(np.isfinite(loss)) and all(0 <= v <= 4 for v in loss)  # 2 - 2cos per term, two terms
    assert all(abs(e.value - 1e-3) < 1e-9 for e in events.Scalars("train/lr"))  # stored as float32
    assert all(0.9 <= e.value < 1 for e in events.Scalars("train/tau"))
    assert all(0 < e.value <= 1 for e in events.Scalars("buffer/fill"))
    cam0 = [e.value for e in events.Scalars("frames/camera_0")]
    assert cam0 == sorted(cam0) and cam0[0] >= 16  # buffer.min_fill frames before the first step
    probe, random_init = events.Scalars("probe/knn"), events.Scalars("probe/knn_random_init")
    assert [e.step for e in probe] == [e.step for e in random_init] and probe[0].step in (4, 8)
    assert all(0.1 <= e.value <= 1 for e in probe + random_init)  # 10 digit classes: chance 0.1
    assert [e.value for e in events.Scalars("export/version")] == [1, 2]
    assert all(-1 <= e.value <= 1 for e in events.Scalars("export/r2_prev") + events.Scalars("export/cka_prev"))

    grids = events.Images("views")
    assert [g.step for g in grids] == [4, 8]
    side = 32 + 2  # model.image_size plus make_grid's padding: 3 frames x (frame, view 1, view 2)
    assert (grids[0].height, grids[0].width) == (3 * side + 2, 3 * side + 2)
    pixels = np.asarray(Image.open(io.BytesIO(grids[0].encoded_image_string)))
    assert pixels.shape == (3 * side + 2, 3 * side + 2, 3) and pixels.std() > 10  # real pictures, not blank

    run_trainer(config(12), tmp_path)  # resumes from the step-8 checkpoint: the same curves go on
    events = read_back(tmp_path)
    assert steps(events, "train/loss") == list(range(1, 13))
    assert len(list((tmp_path / TENSORBOARD_DIR).glob("events.out.tfevents.*"))) >= 2


def test_making_a_view_grid_leaves_every_training_random_state_as_it_was(tmp_path: Path) -> None:
    cfg = tiny_config(free_tcp_endpoint(), "buffer.temporal_positives=true")
    trainer = ContinualTrainer(cfg, tmp_path, open_receiver=lambda: None)  # not run: the buffer is filled here
    scene = DemoScene(32, 32, seed=1)
    for seq in range(20):
        trainer.buffer.add(Frame(camera_id=0, seq=seq, timestamp=seq / 15, image=scene.render(seq / 15)))

    def states() -> list:
        return [trainer.sampler.get_state(), trainer.learner.generator.get_state(), torch.get_rng_state()]

    before = states()
    grid = trainer._view_grid()
    assert all(torch.equal(a, b) for a, b in zip(before, states()))
    assert grid is not None and grid.shape == (4 * 34 + 2, 3 * 34 + 2, 3) and grid.dtype == np.uint8
    assert np.array_equal(grid, trainer._view_grid())  # seeded by the step: the same step draws the same grid
