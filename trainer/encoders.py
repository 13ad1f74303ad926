"""Encoders by name: a tiny built-in net for tests, any torchvision classifier, or an import string.

`create_encoder(cfg.model.encoder, **cfg.model.encoder_kwargs)` is the one way the project builds
a network, so a typo in a config fails here with the list of valid names instead of deep inside
training. Nothing is downloaded: torchvision models are always built with `weights=None`.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable

import torchvision
from torch import Tensor, nn

from agent.errors import ConfigError


class TinyCNN(nn.Module):
    """Three conv-BN-ReLU stages, global average pool and a linear classifier: a fast stand-in for ResNet.

    Laid out like torchvision's ResNet (`features`, `avgpool`, `fc`), so the same hidden layers
    work: `"avgpool"` (or child index -2) gives the `4 * width`-d embedding, -1 the logits.
    """

    def __init__(self, width: int = 16, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        widths = (width, 2 * width, 4 * width)
        layers: list[nn.Module] = []
        previous = in_channels
        for index, channels in enumerate(widths):
            stride = 1 if index == 0 else 2
            layers += [
                nn.Conv2d(previous, channels, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
            previous = channels
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(previous, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.avgpool(self.features(x)).flatten(1))


BUILTIN: dict[str, Callable[..., nn.Module]] = {"tiny_cnn": TinyCNN}


def available_encoders() -> list[str]:
    """Names `create_encoder` accepts besides `package.module:factory` import strings."""
    return sorted(BUILTIN) + sorted(torchvision.models.list_models(module=torchvision.models))


def create_encoder(name: str, **kwargs: Any) -> nn.Module:
    """Build the encoder `name` with random weights; raise ConfigError naming the problem if it cannot."""
    if ":" in name:
        factory = _import_factory(name)
    elif name in BUILTIN:
        factory = BUILTIN[name]
    elif name in torchvision.models.list_models(module=torchvision.models):
        kwargs = {"weights": None, **kwargs}
        if kwargs["weights"] is not None:
            raise ConfigError(f"encoder {name!r}: pretrained weights cannot be downloaded here; use weights=None")
        factory = getattr(torchvision.models, name)
    else:
        close = difflib.get_close_matches(name, available_encoders(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; use a torchvision classifier name, 'tiny_cnn' or package.module:factory"
        raise ConfigError(f"unknown encoder {name!r}{hint}")
    try:
        net = factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"encoder {name!r} rejected encoder_kwargs {kwargs}: {exc}") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"encoder {name!r} returned {type(net).__name__}, not a torch.nn.Module")
    return net


def _import_factory(spec: str) -> Callable[..., nn.Module]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"encoder {spec!r} is not an import string of the form package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"encoder {spec!r}: cannot import {module_name!r} ({exc})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"encoder {spec!r}: {module_name!r} has no callable {attr!r}")
    return factory
