"""The BYOL learner: byol-pytorch's usage, the reference loss, the target's isolation, checkpoints, errors."""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torchvision import models

from agent.core.errors import ConfigError
from trainer import BYOL
from trainer.encoders import TinyCNN
from trainer.image_checks import LearnerError
from trainer.loss import regression_loss

HEADS = dict(projection_size=16, projection_hidden_size=32)


def tiny_learner(seed: int = 0, **kwargs) -> BYOL:
    torch.manual_seed(seed)
    return BYOL(TinyCNN(width=8), image_size=16, **{"hidden_layer": "avgpool", **HEADS, **kwargs})


def batch(n: int = 6, size: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def train_step(learner: BYOL, opt: torch.optim.Optimizer, images: torch.Tensor) -> float:
    loss = learner(images)
    opt.zero_grad()
    loss.backward()
    opt.step()
    learner.update_moving_average()
    return loss.item()


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


def test_training_on_a_batch_of_one_fails_clearly_but_embedding_one_works() -> None:
    learner = tiny_learner()
    with pytest.raises(LearnerError, match="at least 2 images"):
        learner(batch(1))
    bn = learner.online.backbone.net.features[1]
    stats = bn.running_mean.clone()
    projection, embedding = learner(batch(1, 16), return_embedding=True)  # eval mode inside, even when training
    assert projection.shape == (1, 16) and embedding.shape == (1, 32)
    assert learner.training and torch.equal(bn.running_mean, stats)
    learner.eval()
    assert learner(batch(1, 16), return_embedding=True, return_projection=False).shape == (1, 32)
    assert torch.isfinite(learner(batch(1)))  # an eval-mode loss is allowed on one image


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda l: l(torch.rand(3, 16, 16)), LearnerError, r"\(N, C, H, W\)"),
        (lambda l: l(torch.randint(0, 255, (2, 3, 16, 16), dtype=torch.uint8)), LearnerError, "float"),
        (lambda l: l(torch.rand(2, 1, 16, 16)), LearnerError, "3 channels"),
        (lambda l: l(batch(4), batch(3)), LearnerError, "images2"),
        (lambda l: l.embed(batch(2), which="student"), LearnerError, "which"),
        (lambda l: l(torch.rand(2, 16, 16), return_embedding=True), LearnerError, r"\(N, C, H, W\)"),
    ],
)
def test_bad_input_names_the_problem(call, error, message: str) -> None:
    with pytest.raises(error, match=message):
        call(tiny_learner())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(hidden_layer="avgpol"),
            "hidden layer 'avgpol' not found in TinyCNN; top-level modules: features, avgpool, fc",
        ),
        (dict(hidden_layer=7), "out of range"),
        (dict(tau_schedule="linear"), "unknown tau_schedule 'linear'"),
        (dict(tau_schedule="cosine"), "total_steps"),
        (dict(moving_average_decay=1.5), r"must be in \[0, 1\]"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny_learner(**kwargs)


def test_view_two_comes_from_images2_when_given() -> None:
    learner = tiny_learner()
    seen: list[torch.Tensor] = []
    learner.augment2 = lambda x: seen.append(x) or x
    first, second = batch(4, 16, seed=1), batch(4, 16, seed=2)
    learner(first, second)
    learner(first)
    assert seen[0] is second and seen[1] is first


def test_user_augment_fn_is_used_for_both_views() -> None:
    calls = []
    flip = nn.Sequential()  # an empty nn.Sequential is falsy: it must still be taken as the augmentation

    def augment(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape)
        return flip(x[..., :16, :16])

    learner = tiny_learner(augment_fn=augment)
    assert learner.augment1 is augment and learner.augment2 is augment
    assert torch.isfinite(learner(batch(4, 20)))
    assert len(calls) == 2


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


@pytest.mark.parametrize(
    "images, images2, message",
    [
        (batch() * 255, None, r"images must be float in \[0, 1\]; got values from 0\.0\d* to 25\d\.\d+ .*/ 255"),
        (batch(), batch() - 0.5, r"images2 must be float in \[0, 1\]; got values from -0\.\d+ to 0\.\d+"),
        (torch.full((4, 3, 20, 20), float("nan")), None, "nan"),
    ],
)
def test_float_images_outside_0_1_are_refused_naming_the_range(images, images2, message: str) -> None:
    learner = tiny_learner()
    with pytest.raises(LearnerError, match=message) as info:
        learner(images, images2)
    assert "\n" not in str(info.value)


def test_a_one_channel_net_is_wrapped_with_the_channels_of_its_first_conv() -> None:
    torch.manual_seed(0)
    net = TinyCNN(width=8, in_channels=1)
    learner = BYOL(net, image_size=16, hidden_layer="avgpool", generator=torch.Generator().manual_seed(0), **HEADS)
    assert learner.channels == 1 and len(learner.mean) == 1 and len(learner.std) == 1
    mono = torch.rand(6, 1, 20, 20, generator=torch.Generator().manual_seed(0))
    assert learner.augment1(mono).shape == learner.augment2(mono).shape == (6, 1, 16, 16)
    train_step(learner, torch.optim.Adam(learner.parameters(), lr=1e-3), mono)
    assert learner.embed(mono[:, :, :16, :16]).shape == (6, 32)
    with pytest.raises(LearnerError, match="must have 1 channel;"):
        learner(batch())  # RGB images into the mono learner's views


def test_channels_argument_and_its_clear_errors() -> None:
    torch.manual_seed(0)
    raw = BYOL(
        TinyCNN(width=8, in_channels=4), image_size=16, hidden_layer="avgpool", channels=4, normalize=False, **HEADS
    )
    assert raw.channels == 4 and raw.mean == (0.0,) * 4
    assert torch.isfinite(raw(torch.rand(4, 4, 16, 16)))
    with pytest.raises(LearnerError, match=r"channels=3 .* first convolution takes 1"):
        BYOL(TinyCNN(width=8, in_channels=1), image_size=16, hidden_layer="avgpool", channels=3, **HEADS)
    with pytest.raises(LearnerError, match="normalize=False"):
        BYOL(TinyCNN(width=8, in_channels=4), image_size=16, hidden_layer="avgpool", **HEADS)


def test_non_square_image_size_gives_non_square_views_and_trains() -> None:
    torch.manual_seed(0)
    learner = BYOL(TinyCNN(width=8), image_size=(16, 24), hidden_layer="avgpool", **HEADS)
    assert learner.image_size == (16, 24)
    images = batch(4, 30)
    assert learner.augment1(images).shape == learner.augment2(images).shape == (4, 3, 16, 24)
    train_step(learner, torch.optim.Adam(learner.parameters(), lr=1e-3), images)
    assert learner.embed(torch.rand(2, 3, 16, 24)).shape == (2, 32)


@pytest.mark.parametrize("size", [(16,), (16, 24, 3), (1, 16), "16", 1.5, True])
def test_a_bad_image_size_is_a_one_line_error(size) -> None:
    with pytest.raises(LearnerError, match="image_size must be") as info:
        BYOL(TinyCNN(width=8), image_size=size, hidden_layer="avgpool", **HEADS)
    assert "\n" not in str(info.value)


def test_the_range_check_is_skipped_only_when_the_caller_vouches_for_the_range() -> None:
    # The continual trainer feeds uint8 / 255 and passes unit_range=True: on CUDA the check would read two
    # numbers back from the device every step (tests/cuda checks that the step no longer syncs there).
    learner = tiny_learner()
    frames = batch(4, 16) * 255  # a forgotten / 255
    with pytest.raises(LearnerError, match="0-255"):
        learner(frames)
    assert learner(frames, unit_range=True).ndim == 0


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
