"""Encoder registry: every kind of name builds a working network; bad names fail with a hint."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from agent.errors import ConfigError
from trainer.encoders import TinyCNN, available_encoders, create_encoder


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
        ("resnet18", {"weights": "DEFAULT"}, "cannot be downloaded"),
    ],
)
def test_bad_names_fail_with_a_clear_error(name: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_encoder(name, **kwargs)
