"""train.compat_distill: a term keeping the online encoder linearly mappable into a frozen snapshot's space."""

from __future__ import annotations

import pytest
import torch

from agent.core.config import load_config
from agent.core.errors import ConfigError
from tests.conftest import TINY_MODEL, free_tcp_endpoint
from tests.trainer.test_continual import run_trainer, tiny_config
from trainer.learner_factory import build_learner, build_optimizer
from trainer.train_step import TrainStep


def make_step(*overrides: str) -> TrainStep:
    cfg = load_config(None, [*TINY_MODEL, "train.device=cpu", "train.channels_last=false", "train.lr=1e-2", *overrides])
    learner = build_learner(cfg.model, cfg.train, "cpu", cfg.augment)
    return TrainStep(learner, build_optimizer(learner, cfg.train), cfg.train, torch.device("cpu"))


def frames(seed: int, n: int = 8) -> torch.Tensor:
    return torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_the_term_starts_at_the_snapshot_and_trains_towards_a_frozen_copy():
    torch.manual_seed(0)
    plain, distilled = make_step(), make_step("train.compat_distill=1.0")
    assert plain.distiller is None and distilled.distiller is not None
    # before a snapshot the option changes nothing: the same loss, step for step
    for seed in range(3):
        assert plain(frames(seed)) == pytest.approx(distilled(frames(seed)), rel=1e-5)
    distilled.set_snapshot_once(lambda: distilled.learner.encoder_module("online"))
    snapshot = distilled.distiller.snapshot
    frozen = [p.clone() for p in snapshot.parameters()]
    assert all(not p.requires_grad for p in snapshot.parameters())
    distilled.set_snapshot_once(lambda: distilled.learner.encoder_module("target"))  # only the first one counts
    assert distilled.distiller.snapshot is snapshot and distilled.distiller.snapshot_step == 3
    for seed in range(3, 6):
        assert distilled(frames(seed)) is not None
    assert all(torch.equal(a, b) for a, b in zip(frozen, snapshot.parameters()))  # the snapshot never trains
    predictor = distilled.distiller.predictor
    assert predictor is not None and not torch.equal(predictor.weight, torch.eye(predictor.weight.shape[0]))
    # the probe and export paths (eval embeddings) see no term and change nothing
    distilled.embed(frames(9), 32, which="online")


def test_the_term_is_added_to_the_loss_and_its_gradient_reaches_the_encoder():
    """Twins (same seed, same batches) after a snapshot: the distilled one reports BYOL loss + the term, and
    its encoder moves differently. Whether the term keeps versions compatible is measured on real photos by
    benchmarks/bench_compat.py --data (RESULTS.md, "Pinned swaps on real photos")."""
    torch.manual_seed(0)
    plain, distilled = make_step(), make_step("train.compat_distill=5.0")
    plain(frames(0)), distilled(frames(0))
    distilled.set_snapshot_once(lambda: distilled.learner.encoder_module("online"))
    loss_plain, loss_distilled = plain(frames(1)), distilled(frames(1))
    assert loss_plain is not None and loss_distilled is not None and loss_distilled > loss_plain
    moved = [
        not torch.equal(a, b)
        for a, b in zip(plain.learner.online.backbone.parameters(), distilled.learner.online.backbone.parameters())
    ]
    assert any(moved)


def test_the_trainer_takes_the_snapshot_at_its_first_export(tmp_path):
    ep = free_tcp_endpoint()
    cfg = tiny_config(
        ep,
        "train.max_steps=7",
        "export.every_steps=3",
        "train.compat_distill=1.0",
        "buffer.min_fill=16",
        "buffer.capacity_frames=64",
        "export.min_compatibility=null",
    )
    trainer = run_trainer(cfg, tmp_path)
    assert trainer.train_step.distiller is not None and trainer.train_step.distiller.snapshot_step == 3
    assert sorted(p.name for p in (tmp_path / "exports").glob("encoder-*.onnx"))  # it published as usual


def test_session_start_distils_towards_the_encoder_the_session_resumed_from(tmp_path):
    """train.distill_snapshot=session_start (against forgetting, CaSSLe's frozen previous-task model): a fresh
    run has nothing to distil towards, even after it publishes; a resumed one freezes the weights it resumed."""
    ep = free_tcp_endpoint()
    common = [
        "train.compat_distill=1.0",
        "train.distill_snapshot=session_start",
        "export.every_steps=3",
        "buffer.min_fill=16",
        "buffer.capacity_frames=64",
        "export.min_compatibility=null",
    ]
    first = run_trainer(tiny_config(ep, "train.max_steps=5", *common), tmp_path)
    assert first.train_step.distiller is not None and not first.train_step.distiller.active
    resumed_from = first.learner.encoder_module("target").state_dict()
    second = run_trainer(tiny_config(ep, "train.max_steps=9", *common), tmp_path)
    distiller = second.train_step.distiller
    assert distiller is not None and distiller.snapshot_step == 5 and second.step == 9
    snapshot = distiller.snapshot.state_dict()
    assert all(torch.equal(resumed_from[k], snapshot[k]) for k in resumed_from)


def test_a_negative_weight_is_refused():
    with pytest.raises(ConfigError, match="compat_distill"):
        load_config(None, ["train.compat_distill=-1"])


def test_copies_of_the_encoder_do_not_copy_the_trainer():
    """The capture hook rides along in deep copies of the online encoder (export.weights=online, the snapshot):
    it must not drag a copy of the TrainStep (learner, optimizer) with it, nor collect anything."""
    step = make_step("train.compat_distill=1.0")
    copy = step.learner.encoder_module("online")
    hooks = list(copy._forward_hooks.values())
    assert hooks and all(getattr(hook, "__self__", None) is None for hook in hooks)
    step._captured = []
    copy(torch.zeros(2, 3, 32, 32))
    assert step._captured == []
    step._captured = None
