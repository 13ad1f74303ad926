"""Learner and optimizer from the config; LARS against a per-tensor reference."""

from __future__ import annotations

import pytest
import torch

from agent.core.config import AugmentConfig, ModelConfig, TrainConfig
from trainer.augment import VIEW1, VIEW2
from trainer.lars import LARS
from trainer.learner_factory import build_learner, build_optimizer

MODEL = ModelConfig(
    encoder="tiny_cnn", encoder_kwargs={"width": 4}, image_size=16, projection_size=8, projection_hidden_size=16
)


def train_cfg(**kwargs) -> TrainConfig:
    return TrainConfig(**{"batch_size": 4, "tau_schedule": "warmup_constant", "tau_warmup_steps": 5, **kwargs})


def test_build_learner_follows_the_config_and_its_seed() -> None:
    cfg = train_cfg(seed=3)
    first, second = build_learner(MODEL, cfg, "cpu"), build_learner(MODEL, cfg, "cpu")
    assert first.tau == cfg.tau_base and first.tau_schedule == "warmup_constant"
    assert first.online.projector.layers[-1].out_features == 8
    assert first.net.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    tensors = [(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()) if torch.is_tensor(a)]
    assert all(torch.equal(a, b) for a, b in tensors)
    images = torch.rand(4, 3, 16, 16)
    assert torch.equal(first.augment1(images), second.augment1(images)), "views reproduce from the seed"
    other = build_learner(MODEL, train_cfg(seed=4), "cpu")
    assert not torch.equal(other.net.features[0].weight, first.net.features[0].weight)


def test_views_come_from_the_augment_section() -> None:
    default = build_learner(MODEL, train_cfg(), "cpu")
    assert (default.augment1.spec, default.augment2.spec) == (VIEW1, VIEW2), "defaults are the paper's views"
    keep_colour = AugmentConfig(hue=0.0, saturation=0.0, grayscale_p=0.0, crop_scale=(0.25, 1.0), blur_p=(0.0, 0.0))
    learner = build_learner(MODEL, train_cfg(), "cpu", keep_colour)
    one, two = learner.augment1.spec, learner.augment2.spec
    assert (one.hue, one.grayscale_p, one.crop_scale, one.blur_p) == (0.0, 0.0, (0.25, 1.0), 0.0)
    assert (two.solarize_p, two.blur_p, two.brightness) == (0.2, 0.0, 0.4)
    # no hue, saturation or grayscale: the colour balance of every pixel survives the view
    # (brightness and contrast scale it; without blur the crop's mean colour stays put up to scale)
    images = torch.rand(8, 3, 16, 16)
    images[:, 0] *= 0.2  # blue-green images: red stays the smallest channel
    mean, std = torch.tensor(learner.mean).view(1, 3, 1, 1), torch.tensor(learner.std).view(1, 3, 1, 1)
    view = learner.augment1(images) * std + mean
    channel_means = view.mean(dim=(2, 3))
    assert (channel_means[:, 0] < channel_means[:, 1:].min(dim=1).values).all()


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "lars"])
def test_optimizers_train_the_online_side_with_decay_on_weights_only(name: str) -> None:
    learner = build_learner(MODEL, train_cfg(), "cpu")
    opt = build_optimizer(learner, train_cfg(optimizer=name, weight_decay=1e-3, lr=1e-2))
    decay, no_decay = opt.param_groups
    assert all(p.ndim > 1 for p in decay["params"]) and decay["weight_decay"] == 1e-3
    assert all(p.ndim <= 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    target = {id(p) for p in learner.target.parameters()}
    assert not target & {id(p) for group in opt.param_groups for p in group["params"]}
    before = [p.detach().clone() for p in learner.online.parameters()]
    loss = learner(torch.rand(4, 3, 16, 16))
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.online.parameters()))


def reference_lars(params, grads, buffers, lr, momentum, wd, eta, exclude):
    """Per-tensor LARS as written in the paper's pseudo-code (with host-side branching)."""
    for p, g, buf in zip(params, grads, buffers):
        g = g + wd * p
        if not exclude:
            w_norm, g_norm = p.norm().item(), g.norm().item()
            if w_norm > 0 and g_norm > 0:
                g = g * (eta * w_norm / g_norm)
        buf.mul_(momentum).add_(g)
        p.sub_(lr * buf)


def test_lars_matches_the_per_tensor_reference() -> None:
    torch.manual_seed(0)
    weights = [torch.randn(4, 3), torch.randn(5), torch.zeros(2, 2)]  # a zero tensor takes the plain step
    ours = [w.clone().requires_grad_() for w in weights]
    reference = [w.clone() for w in weights]
    buffers = [torch.zeros_like(w) for w in weights]
    opt = LARS(
        [
            {"params": ours[:1] + ours[2:], "weight_decay": 0.1},
            {"params": ours[1:2], "weight_decay": 0.0, "lars_exclude": True},
        ],
        lr=0.5,
    )
    for _ in range(3):
        grads = [torch.randn_like(w) for w in weights]
        for p, g in zip(ours, grads):
            p.grad = g.clone()
        opt.step()
        reference_lars(
            reference[:1] + reference[2:], grads[:1] + grads[2:], buffers[:1] + buffers[2:], 0.5, 0.9, 0.1, 0.001, False
        )
        reference_lars(reference[1:2], grads[1:2], buffers[1:2], 0.5, 0.9, 0.0, 0.001, True)
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a.detach(), b)


def test_a_mono_non_square_config_builds_a_learner_that_trains() -> None:
    from agent.core.config import load_config

    cfg = load_config(
        None,
        [
            "model.encoder=tiny_cnn",
            "model.encoder_kwargs={width: 4}",
            "model.image_size=[16, 24]",
            "model.projection_size=8",
            "model.projection_hidden_size=16",
            "capture.channels=1",
        ],
    )
    assert cfg.model.image_size == (16, 24) and cfg.model.image_hw == (16, 24) and cfg.capture.channels == 1
    learner = build_learner(cfg.model, train_cfg(), "cpu", channels=cfg.capture.channels)
    assert learner.channels == 1 and learner.image_size == (16, 24) and len(learner.mean) == 1
    images = torch.rand(4, 1, 20, 30)
    assert learner.augment1(images).shape == (4, 1, 16, 24)
    loss = learner(images)
    loss.backward()
    assert torch.isfinite(loss)
