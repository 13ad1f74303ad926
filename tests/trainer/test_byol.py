"""The BYOL learner: byol-pytorch's usage, the reference loss, the target's isolation, checkpoints, errors."""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torchvision import models

from tests.trainer.byol_tiny import HEADS, batch, tiny_learner, train_step
from trainer import BYOL
from trainer.encoders import TinyCNN
from trainer.image_checks import LearnerError
from trainer.loss import regression_loss


@pytest.mark.slow
def test_readme_example_runs_with_only_the_import_changed(tmp_path) -> None:
    # byol-pytorch's README, verbatim but for the import, weights=None, tiny sizes, 2 steps, and torch.rand
    # for its torch.randn: our views take images in [0, 1] and refuse anything else.
    import torch
    from torchvision import models

    from trainer import BYOL

    resnet = models.resnet18(weights=None)
    initial = copy.deepcopy(resnet.state_dict())
    learner = BYOL(resnet, image_size=32, hidden_layer="avgpool")
    opt = torch.optim.Adam(learner.parameters(), lr=3e-4)

    def sample_unlabelled_images():
        return torch.rand(4, 3, 32, 32)

    for _ in range(2):
        images = sample_unlabelled_images()
        loss = learner(images)
        opt.zero_grad()
        loss.backward()
        opt.step()
        learner.update_moving_average()  # update moving average of target encoder
    torch.save(resnet.state_dict(), tmp_path / "improved-net.pt")

    saved = torch.load(tmp_path / "improved-net.pt")
    assert torch.isfinite(loss)
    assert not torch.equal(saved["conv1.weight"], initial["conv1.weight"]), "training must change the user's net"
    assert torch.equal(saved["fc.weight"], initial["fc.weight"]), "layers after the hidden layer get no update"
    assert learner.step == 2


def test_construction_moves_no_batchnorm_statistic_and_keeps_training_flags() -> None:
    torch.manual_seed(0)
    net = TinyCNN(width=8)
    net.features[1].eval()  # a user-frozen BN must stay frozen
    before = copy.deepcopy(net.state_dict())
    flags = [m.training for m in net.modules()]
    BYOL(net, image_size=16, hidden_layer="avgpool", **HEADS)
    after = net.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert [m.training for m in net.modules()] == flags
    assert all(p.grad is None for p in net.parameters())


def test_loss_is_the_reference_formula_with_per_view_statistics() -> None:
    learner = tiny_learner()
    images = batch()
    half = lambda x: x * 0.5  # noqa: E731  deterministic views, so the test can recompute them
    learner.augment1, learner.augment2 = half, (lambda x: x.flip(-1))
    loss = learner(images)

    reference = copy.deepcopy(learner)  # fresh copy: same weights, each view run on its own
    v1, v2 = images * 0.5, images.flip(-1)

    def online(v: torch.Tensor) -> torch.Tensor:
        return reference.predictor(reference.online.projector(reference.online.backbone(v)))

    def target(v: torch.Tensor) -> torch.Tensor:
        return reference.target.projector(reference.target.backbone(v))

    p1, p2, z1, z2 = online(v1), online(v2), target(v1), target(v2)

    def term(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        cos = (p * z).sum(1) / (p.norm(dim=1) * z.norm(dim=1))
        return 2 - 2 * cos

    expected = (term(p1, z2) + term(p2, z1)).mean()  # both terms summed, then the batch mean
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    assert 0.0 <= loss.item() <= 8.0


@pytest.mark.slow
@pytest.mark.parametrize(
    "layer, dim", [("avgpool", 512), (-2, 512), ("layer3", 256 * 2 * 2), (4, 64 * 8 * 8), (-1, 1000)]
)
def test_hidden_layer_by_name_index_and_output(layer, dim: int) -> None:
    torch.manual_seed(0)
    learner = BYOL(models.resnet18(weights=None), image_size=32, hidden_layer=layer, **HEADS)
    loss = learner(batch(4, 32))
    loss.backward()
    assert torch.isfinite(loss)
    assert learner.embed(batch(3, 32)).shape == (3, dim)
    assert learner.online.projector.layers[0].in_features == dim


def test_an_optimizer_from_parameters_never_changes_the_target() -> None:
    learner = tiny_learner()
    target_ids = {id(p) for p in learner.target.parameters()}
    assert target_ids.isdisjoint(id(p) for p in learner.parameters())
    assert target_ids.isdisjoint(id(p) for _, p in learner.named_parameters())
    assert all(not p.requires_grad for p in learner.target.parameters())
    images = batch()
    learner(images).backward()  # first training forward: the target starts as the online weights
    start = [p.detach().clone() for p in learner.target.parameters()]
    for opt in (
        torch.optim.AdamW(learner.parameters(), lr=0.1, weight_decay=0.5),
        torch.optim.SGD(learner.parameters(), lr=0.1, momentum=0.9, weight_decay=0.5),
    ):
        for _ in range(2):
            opt.zero_grad()
            learner(images).backward()
            opt.step()
    assert all(p.grad is None for p in learner.target.parameters())
    assert all(torch.equal(a, b) for a, b in zip(start, learner.target.parameters()))

    online = [p.detach().clone() for p in learner.online.parameters()]
    tau = learner.tau
    learner.update_moving_average()
    for old, new, now in zip(start, online, learner.target.parameters()):
        torch.testing.assert_close(now, tau * old + (1 - tau) * new)  # hand computation of the EMA
    assert any(not torch.equal(a, b) for a, b in zip(start, learner.target.parameters()))


def test_tau_follows_the_schedule_and_step_counts_updates() -> None:
    learner = tiny_learner(moving_average_decay=0.9, tau_schedule="warmup_constant", tau_final=0.99, tau_warmup_steps=2)
    taus = []
    for _ in range(4):
        taus.append(learner.tau)
        learner.update_moving_average()
    assert learner.step == 4
    assert taus == pytest.approx([0.9, 0.945, 0.99, 0.99])


def test_state_dict_round_trip_gives_the_identical_next_loss() -> None:
    a = tiny_learner(seed=0, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(a.parameters(), lr=1e-3)
    for step in range(2):
        train_step(a, opt, batch(seed=step))
    state = copy.deepcopy(a.state_dict())
    assert any(key.startswith("target.") for key in state) and any(key.startswith("predictor.") for key in state)

    b = tiny_learner(seed=7, generator=torch.Generator().manual_seed(99))
    b.load_state_dict(state)
    assert b.step == a.step == 2 and b.tau == a.tau
    images = batch(seed=5)
    torch.testing.assert_close(b.embed(images), a.embed(images), atol=0, rtol=0)  # incl. BN running stats
    assert a(images).item() == b(images).item()  # same weights, target and view generator state


def test_last_stats_reports_the_normalised_embedding_spread() -> None:
    learner = tiny_learner()
    learner(batch())
    std = learner.last_stats["embedding_std"]
    assert isinstance(std, float) and 0.01 < std < 1.0


def test_simsiam_mode() -> None:
    learner = tiny_learner(use_momentum=False)
    assert learner.target is None
    assert sum(isinstance(m, nn.Linear) for m in learner.online.projector.modules()) == 3
    loss = learner(batch())
    loss.backward()
    assert torch.isfinite(loss)
    assert learner.embed(batch(2, 16)).shape == (2, 32)
    with pytest.raises(LearnerError, match="SimSiam"):
        learner.update_moving_average()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter, as export.exporter='torchscript'
def test_encoder_module_is_a_hookless_cpu_copy_that_exports_to_onnx(tmp_path) -> None:
    learner = tiny_learner()
    train_step(learner, torch.optim.Adam(learner.parameters(), lr=1e-2), batch())
    encoder = learner.encoder_module("target")
    assert not encoder.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in encoder.modules())
    assert all(not p.requires_grad and p.device.type == "cpu" for p in encoder.parameters())
    images = batch(3, 16)
    torch.testing.assert_close(encoder(images), learner.embed(images, "target"))
    assert not torch.allclose(learner.embed(images, "online"), learner.embed(images, "target"))

    path = tmp_path / "encoder.onnx"
    torch.onnx.export(
        encoder,
        (batch(2, 16),),
        str(path),
        dynamo=False,
        input_names=["images"],
        output_names=["embedding"],
        dynamic_axes={"images": {0: "batch"}, "embedding": {0: "batch"}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"images": images.numpy()})
    np.testing.assert_allclose(onnx_out, encoder(images).numpy(), atol=1e-4)


def test_runs_under_bf16_autocast_with_a_channels_last_encoder() -> None:
    torch.manual_seed(0)
    net = TinyCNN(width=8).to(memory_format=torch.channels_last)
    learner = BYOL(net, image_size=16, hidden_layer="avgpool", **HEADS)
    assert learner.augment1(batch(2)).is_contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = learner(batch().contiguous(memory_format=torch.channels_last))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in learner.parameters() if p.grad is not None)


def test_regression_loss_reference_scale() -> None:
    p = torch.randn(5, 8)
    assert torch.allclose(regression_loss(p, 3 * p), torch.zeros(5), atol=1e-6)
    assert torch.allclose(regression_loss(p, -p), torch.full((5,), 4.0))


def test_normalize_flag_sets_the_views_and_the_exported_statistics() -> None:
    normalised, raw = tiny_learner(), tiny_learner(normalize=False)
    assert normalised.mean == (0.485, 0.456, 0.406) and normalised.std == (0.229, 0.224, 0.225)
    assert raw.mean == (0.0, 0.0, 0.0) and raw.std == (1.0, 1.0, 1.0)
    views = raw.augment2(batch(8))
    assert views.min() >= 0 and views.max() <= 1
    assert normalised.augment1(batch(8)).min() < 0


def _trained_weights(seed: int) -> dict:
    """A TinyCNN state dict with BatchNorm running statistics far from their init (as pretrained weights have)."""
    torch.manual_seed(seed)
    net = TinyCNN(width=8).train()
    with torch.no_grad():
        for _ in range(20):
            net(torch.rand(8, 3, 16, 16) * 3 + 1)
    return net.state_dict()


def test_weights_loaded_into_the_net_after_construction_reach_the_targets_batchnorm_statistics() -> None:
    learner = tiny_learner()
    learner.net.load_state_dict(_trained_weights(3))
    images = batch(seed=1)
    torch.testing.assert_close(learner.embed(images, "target"), learner.embed(images, "online"), atol=0, rtol=0)
    learner(images).backward()  # the first training forward starts the target as the online branch, buffers too
    online = dict(learner.online.named_buffers())
    for name, buffer in learner.target.named_buffers():
        torch.testing.assert_close(buffer, online[name], atol=0, rtol=0, msg=name)
    learner.update_moving_average()
    torch.testing.assert_close(learner.embed(images, "target"), learner.embed(images, "online"))


@pytest.mark.slow  # ~10 s on 2 cores: trains, reloads weights mid-run and trains again
def test_reset_moving_average_restarts_the_target_from_weights_loaded_mid_run() -> None:
    learner = tiny_learner()
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    for step in range(2):
        train_step(learner, opt, batch(seed=step))
    learner.net.load_state_dict(_trained_weights(4))
    learner.reset_moving_average()  # byol-pytorch's name: the target starts again as the online branch
    images = batch(seed=3)
    torch.testing.assert_close(learner.embed(images, "target"), learner.embed(images, "online"), atol=0, rtol=0)
    state = copy.deepcopy(learner.state_dict())  # saved before the next step: the reload starts from online too
    learner.update_moving_average()
    torch.testing.assert_close(learner.embed(images, "target"), learner.embed(images, "online"))
    again = tiny_learner(seed=5)
    again.load_state_dict(state)
    torch.testing.assert_close(again.embed(images, "target"), learner.embed(images, "online"))
