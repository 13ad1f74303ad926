"""Encoder registry: every kind of name builds a working network; bad names fail with a hint."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from agent.core.config import ModelConfig
from agent.core.errors import ConfigError
from trainer.encoders import TinyCNN, adapt_stem, available_encoders, build_encoder, create_encoder


@pytest.mark.parametrize("name", ["tiny_cnn", "resnet18", "mobilenet_v3_small", "trainer.encoders:TinyCNN"])
def test_each_kind_of_name_builds_a_working_network(name: str) -> None:
    net = create_encoder(name).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, 32, 32))
    assert isinstance(net, nn.Module) and out.ndim == 2 and out.shape[0] == 2


def test_kwargs_reach_the_factory() -> None:
    assert create_encoder("tiny_cnn", width=8).fc.in_features == 32
    assert create_encoder("resnet18", num_classes=7).fc.out_features == 7
    assert isinstance(create_encoder("tiny_cnn"), TinyCNN)
    assert "tiny_cnn" in available_encoders() and "resnet50" in available_encoders()


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("resnet19", {}, "unknown encoder 'resnet19'; did you mean resnet18"),
        ("no_such_package_xyz:make", {}, "cannot import 'no_such_package_xyz'"),
        ("trainer.encoders:nothing_here", {}, "has no callable 'nothing_here'"),
        ("builtins:dict", {}, "returned dict, not a torch.nn.Module"),
        (":make", {}, "package.module:factory"),
        ("tiny_cnn", {"depth": 3}, "rejected encoder_kwargs"),
        (
            "resnet18",
            {"weights": "IMAGENET1K_V9"},
            "is not a weights name of 'resnet18'; allowed: DEFAULT, IMAGENET1K_V1",
        ),
        ("tiny_cnn", {"weights": "DEFAULT"}, "rejected encoder_kwargs"),
    ],
)
def test_bad_names_fail_with_a_clear_error(name: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_encoder(name, **kwargs)


@pytest.mark.parametrize("stem, side", [("standard", 1), ("small", 2), ("cifar", 4)])
def test_small_input_stems_keep_larger_maps(stem: str, side: int) -> None:
    """At 32 px the standard ResNet stem leaves a 1x1 map at layer4; 'small' 2x2, 'cifar' 4x4."""
    net = build_encoder(ModelConfig(encoder="resnet18", stem=stem)).eval()
    with torch.no_grad():
        maps = nn.Sequential(*list(net.children())[:-2])(torch.rand(2, 3, 32, 32))
    assert maps.shape == (2, 512, side, side)
    if stem != "standard":
        assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
        assert isinstance(net.maxpool, nn.Identity) == (stem == "cifar")


def test_a_stem_for_a_network_without_one_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="has none: use model.stem=standard"):
        build_encoder(ModelConfig(encoder="mobilenet_v3_small", stem="small"))
    assert isinstance(build_encoder(ModelConfig(encoder="tiny_cnn", stem="standard")), TinyCNN)
    with pytest.raises(ConfigError, match="unknown model.stem"):
        adapt_stem(create_encoder("resnet18"), "tiny")


def test_auto_stem_is_small_for_a_resnet_on_small_inputs_only() -> None:
    assert build_encoder(ModelConfig(encoder="resnet18", stem="auto", image_size=32)).conv1.kernel_size == (3, 3)
    assert build_encoder(ModelConfig(encoder="resnet18", stem="auto", image_size=112)).conv1.kernel_size == (7, 7)
    assert isinstance(build_encoder(ModelConfig(encoder="tiny_cnn", stem="auto", image_size=32)), TinyCNN)


def test_a_mono_encoder_sees_a_gray_image_as_the_rgb_encoder_sees_it_replicated() -> None:
    from trainer.encoders import adapt_input_channels

    torch.manual_seed(0)
    rgb = create_encoder("resnet18").eval()
    gray = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        expected = rgb(gray.expand(2, 3, 32, 32))
        mono = adapt_input_channels(rgb, 1)
        assert mono.conv1.in_channels == 1 and mono.conv1.weight.shape == (64, 1, 7, 7)
        torch.testing.assert_close(mono(gray), expected, atol=1e-5, rtol=1e-5)
    assert build_encoder(ModelConfig(encoder="tiny_cnn"), channels=1).features[0].in_channels == 1
    with pytest.raises(ConfigError, match="first convolution takes 3 channels"):
        adapt_input_channels(create_encoder("tiny_cnn"), 4)


def test_a_non_square_image_size_picks_the_stem_by_its_longer_side() -> None:
    small = build_encoder(ModelConfig(encoder="resnet18", stem="auto", image_size=(32, 64)))
    standard = build_encoder(ModelConfig(encoder="resnet18", stem="auto", image_size=(32, 96)))
    assert small.conv1.kernel_size == (3, 3) and standard.conv1.kernel_size == (7, 7)
