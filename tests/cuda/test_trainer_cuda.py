"""The continual trainer on CUDA: bf16 autocast, channels_last, the replay buffer on the device (and pinned
on the host), the NaN guard's restore, and an export from the CUDA-trained checkpoint that passes parity.

The same real pieces as tests/trainer/test_continual.py (real ZeroMQ feeder, real checkpoints), on
`train.device=cuda`. Skipped without CUDA.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from agent.core.config import ExportConfig
from agent.core.demo_scene import DemoScene
from agent.core.wire import Frame
from agent.pipeline import build_trainer
from agent.robot.runtime import HotEncoder
from export.from_checkpoint import export_checkpoint, load_checkpoint_encoder
from export.manifest import manifest_filename, read_manifest
from export.onnx_export import input_spec
from export.publish import Publisher
from export.verify import torch_reference
from tests.conftest import free_tcp_endpoint
from tests.cuda.gpu import needs_cuda
from tests.trainer.test_continual import Feeder, finite, records, run_trainer, tiny_config
from trainer.checkpoint import list_checkpoints
from trainer.continual import TrainingDiverged

pytestmark = needs_cuda

CUDA_RUN = ["train.device=cuda", "train.precision=bf16", "train.channels_last=true"]


@pytest.mark.parametrize("buffer_device", ["cuda", "auto"])
def test_trains_on_cuda_in_bf16_channels_last_with_the_buffer_on_the_device(tmp_path: Path, buffer_device: str) -> None:
    cfg = tiny_config(
        free_tcp_endpoint(),
        *CUDA_RUN,
        f"buffer.device={buffer_device}",
        "train.max_steps=6",
        "train.checkpoint_every=3",
        "train.lr=1e-3",
    )
    trainer = run_trainer(cfg, tmp_path)
    assert trainer.step == 6 and [s for s, _ in list_checkpoints(tmp_path)] == [6, 3]
    storage = trainer.buffer._storage
    images, _ = trainer.buffer.sample(4, trainer.sampler)
    if buffer_device == "cuda":
        assert storage.device.type == "cuda" and images.device.type == "cuda"  # batches need no host copy
    else:  # auto on CUDA: frames in host memory, each sampled batch pinned for a non-blocking copy
        assert storage.device.type == "cpu" and images.is_pinned()
    assert next(trainer.learner.parameters()).device.type == "cuda"
    weight = next(p for p in trainer.learner.net.parameters() if p.ndim == 4)
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    autocast = trainer.train_step.autocast
    assert isinstance(autocast, torch.autocast) and autocast.fast_dtype == torch.bfloat16 and autocast.device == "cuda"
    x = trainer.train_step.to_input(images)
    assert x.device.type == "cuda" and x.is_contiguous(memory_format=torch.channels_last)
    lines = [r for r in records(tmp_path) if "loss" in r and "event" not in r]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6] and all(np.isfinite(r["loss"]) for r in lines)
    assert finite(trainer.learner.state_dict())


def test_the_nan_guard_restores_the_last_good_state_on_cuda(tmp_path: Path) -> None:
    # As tests/trainer/test_continual.py on the CPU: 6 good steps, then an absurd lr makes the losses
    # non-finite for real; the trainer restores the step-6 state until it gives up with one line.
    run_trainer(
        tiny_config(free_tcp_endpoint(), *CUDA_RUN, "train.max_steps=6", "train.checkpoint_every=3", "train.lr=1e-3"),
        tmp_path,
    )
    ep = free_tcp_endpoint()
    trainer = build_trainer(
        tiny_config(ep, *CUDA_RUN, "train.max_steps=40", "train.lr=1e30", "train.nan_tolerance=2"), tmp_path
    )
    assert trainer.step == 6
    with pytest.raises(TrainingDiverged, match="lower train.lr"):
        with Feeder(ep):
            trainer.run(threading.Event())
    restores = [r for r in records(tmp_path) if r.get("event") == "restore"]
    assert [(r["from_step"], r["step"]) for r in restores] == [(7, 6)] * 3
    assert trainer.step == 6 and finite(trainer.learner.state_dict())
    assert next(trainer.learner.parameters()).device.type == "cuda"  # restored onto the device, not the CPU copy


def test_a_skipped_non_finite_step_puts_back_batchnorm_statistics_on_cuda(tmp_path: Path) -> None:
    trainer = build_trainer(tiny_config(free_tcp_endpoint(), *CUDA_RUN, "buffer.device=cuda"), tmp_path)
    scene = DemoScene(32, 32, seed=0)
    for seq in range(trainer.cfg.buffer.min_fill):
        trainer.buffer.add(Frame(camera_id=0, seq=seq, timestamp=0.05 * seq, image=scene.render(0.05 * seq)))
    assert trainer._train_step() is not None
    stats = {k: v.clone() for k, v in trainer.learner.state_dict().items() if "running_" in k}
    with torch.no_grad():
        next(trainer.learner.net.parameters()).fill_(float("nan"))
    assert trainer._train_step() is None and trainer.counters.nan_skips == 1
    after = trainer.learner.state_dict()
    assert stats and all(torch.equal(after[k], v) for k, v in stats.items())


def test_a_cuda_trained_checkpoint_exports_with_parity_and_serves(tmp_path: Path) -> None:
    run_dir, out = tmp_path / "run", tmp_path / "exports"
    run_trainer(
        tiny_config(
            free_tcp_endpoint(), *CUDA_RUN, "buffer.device=cuda", "train.max_steps=4", "train.checkpoint_every=4"
        ),
        run_dir,
    )
    step, version = export_checkpoint(run_dir, Publisher(out, 5), ExportConfig())  # parity gate inside: refused if off
    assert step == 4 and version == 1
    manifest = read_manifest(out / manifest_filename(version))
    source = load_checkpoint_encoder(run_dir, "target")
    frames = DemoScene(32, 32, seed=3).render(0.7)[None].repeat(3, axis=0)
    spec = input_spec("uint8_nhwc", manifest.input.height, source.mean, source.std)
    expected = torch_reference(source.encoder, frames, spec)
    with HotEncoder(out, providers="cpu", threads=1) as enc:
        np.testing.assert_allclose(enc.embed(frames), expected, atol=1e-3, rtol=1e-3)


def host_syncs(fn: Callable[[], object]) -> list[str]:
    """The synchronizing CUDA operations `fn` runs, as torch's sync debug mode reports them."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return [str(w.message) for w in caught if "synchroniz" in str(w.message)]


def test_a_training_step_syncs_with_the_host_only_for_the_nan_guard(tmp_path: Path) -> None:
    trainer = build_trainer(tiny_config(free_tcp_endpoint(), *CUDA_RUN, "buffer.device=cuda"), tmp_path)
    scene = DemoScene(32, 32, seed=0)
    for seq in range(trainer.cfg.buffer.min_fill):
        trainer.buffer.add(Frame(camera_id=0, seq=seq, timestamp=0.05 * seq, image=scene.render(0.05 * seq)))
    for _ in range(3):  # warm-up: cudnn autotuning, the allocator, the target's first copy
        assert trainer._train_step() is not None
    images, _ = trainer.buffer.sample(8, trainer.sampler)
    x = trainer.train_step.to_input(images)
    with trainer.train_step.autocast:
        assert host_syncs(lambda: trainer.learner(x)), "the library's range check reads the batch's min/max back"
        assert host_syncs(lambda: trainer.learner(x, unit_range=True)) == []  # what the trainer's forward does
    syncs = host_syncs(lambda: trainer.train_step(images))
    assert len(syncs) == 1, syncs  # the NaN guard reading the loss before deciding on the update, nothing else
