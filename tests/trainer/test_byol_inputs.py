"""The BYOL learner's inputs: images, views, channels, image sizes and arguments, and the one-line errors
that name what is wrong with them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from agent.core.errors import ConfigError
from tests.trainer.byol_tiny import HEADS, batch, tiny_learner, train_step
from trainer import BYOL
from trainer.encoders import TinyCNN
from trainer.image_checks import LearnerError


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
        (lambda learner: learner(torch.rand(3, 16, 16)), LearnerError, r"\(N, C, H, W\)"),
        (lambda learner: learner(torch.randint(0, 255, (2, 3, 16, 16), dtype=torch.uint8)), LearnerError, "float"),
        (lambda learner: learner(torch.rand(2, 1, 16, 16)), LearnerError, "3 channels"),
        (lambda learner: learner(batch(4), batch(3)), LearnerError, "images2"),
        (lambda learner: learner.embed(batch(2), which="student"), LearnerError, "which"),
        (lambda learner: learner(torch.rand(2, 16, 16), return_embedding=True), LearnerError, r"\(N, C, H, W\)"),
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
