"""Encoders by name: a tiny built-in net for tests, any torchvision classifier, or an import string.

`build_encoder(cfg.model)` (name, kwargs and stem from the config) is the one way the project
builds a network, so a typo in a config fails here with the list of valid names instead of deep
inside training. Nothing is downloaded: torchvision models are always built with `weights=None` (a run
starts from weights on disk through trainer/init_weights.py).

Stems for small inputs: torchvision's ResNets begin with a 7x7/2 convolution and a 3x3/2 max-pool
(output stride 4), sized for 224 px ImageNet photos. At 32-64 px that leaves 1x1-2x2 maps at the
last stage. `stem="cifar"` is the CIFAR recipe of solo-learn and lightly's benchmarks (a 3x3/1
convolution, no pooling: output stride 1, ~16x the compute of the standard stem at the same
input size); `stem="small"` keeps the max-pool after a 3x3/1 convolution (output stride 2), which
gives a 32 px input the same feature-map sizes as the standard stem on the same photo upsampled to
64 px, at about the same compute but without spending it on interpolated pixels.
"""

from __future__ import annotations

import difflib
import importlib
from typing import TYPE_CHECKING, Any, Callable, Optional, cast

import torch
import torchvision
from torch import Tensor, nn

from agent.core.errors import ConfigError, ModelFileError

if TYPE_CHECKING:
    from agent.core.config import ModelConfig

STEMS = ("standard", "small", "cifar", "auto")
SMALL_INPUT_MAX = 64  # px: at or below this the standard stem leaves <= 2x2 maps at a ResNet's last stage


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
    """Build the encoder `name` with random weights; raise ConfigError naming the problem if it cannot.

    A torchvision `weights` name is checked but not loaded here: a new run loads it from the local hub
    cache when it starts (trainer/init_weights.py), and nothing is ever downloaded."""
    if ":" in name:
        factory = _import_factory(name)
    elif name in BUILTIN:
        factory = BUILTIN[name]
    elif name in torchvision.models.list_models(module=torchvision.models):
        if kwargs.get("weights") is not None:  # loaded from the hub cache when a run starts (trainer/init_weights.py)
            from trainer.init_weights import torchvision_weights

            torchvision_weights(name, kwargs["weights"])  # a name that does not exist fails here, in one line
        kwargs = {**kwargs, "weights": None}
        factory = getattr(torchvision.models, name)
    else:
        close = difflib.get_close_matches(name, available_encoders(), n=3)
        hint = (
            f"; did you mean {', '.join(close)}?"
            if close
            else "; use a torchvision classifier name, 'tiny_cnn' or package.module:factory"
        )
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


def check_file_model(model_cfg: "ModelConfig", operator: Optional["ModelConfig"], source: str) -> None:
    """Refuse a model section read from a file (checkpoint, manifest) that names an import string.

    `package.module:callable` runs code when the encoder is built, so it is honoured only from
    configuration the operator gave on this machine (YAML / CLI): a file may name one only when
    `operator` (this machine's `model` section) names the same string with the same kwargs.
    Raises ModelFileError (one line) otherwise; torchvision and built-in names always pass.
    """
    if ":" not in model_cfg.encoder:
        return
    same = operator is not None and (operator.encoder, operator.encoder_kwargs) == (
        model_cfg.encoder,
        model_cfg.encoder_kwargs,
    )
    if not same:
        raise ModelFileError(
            f"{source} names the encoder import string {model_cfg.encoder!r}; import strings run code, so they are "
            "honoured only from this machine's config: pass the same model.encoder and model.encoder_kwargs in "
            "--config to trust it"
        )


def build_encoder(model_cfg: "ModelConfig", channels: int = 3) -> nn.Module:
    """`create_encoder(model_cfg.encoder, **model_cfg.encoder_kwargs)` with `model_cfg.stem` applied,
    taking `channels`-channel images (`capture.channels`: 1 for a mono camera).

    Random weights from the global RNG (callers seed it). ConfigError as `create_encoder`, when a
    non-standard stem is asked of a network that has no ResNet stem, or as `adapt_input_channels`.
    """
    net = create_encoder(model_cfg.encoder, **model_cfg.encoder_kwargs)
    net = adapt_stem(net, model_cfg.stem, model_cfg.encoder, max(model_cfg.image_hw))
    return adapt_input_channels(net, channels, model_cfg.encoder)


def adapt_input_channels(net: nn.Module, channels: int, name: str = "the encoder") -> nn.Module:
    """`net` with its first Conv2d (in `net.modules()` order) taking `channels` input channels.

    Unchanged when it already does. From 3 to 1 channel the kernel is summed over its RGB inputs,
    so the mono net responds to a gray image exactly as the RGB net to that image replicated into
    three channels (the usual way to give an RGB architecture a gray input, e.g. timm's
    `adapt_input_conv`). Any other change raises ConfigError: there is no weight mapping to
    keep, and a factory that takes the channel count (`in_channels` in model.encoder_kwargs) is
    the way to build such a net.
    """
    found = next(((path, m) for path, m in net.named_modules() if isinstance(m, nn.Conv2d)), None)
    if found is None or found[1].in_channels == channels:
        return net
    path, conv = found
    if not (conv.in_channels == 3 and channels == 1 and conv.groups == 1):
        raise ConfigError(
            f"{name!r}: its first convolution takes {conv.in_channels} channels and only 3 -> 1 is adapted here; "
            f"build it for {channels} channels (e.g. model.encoder_kwargs in_channels={channels})"
        )
    # a Conv2d's kernel_size/stride/padding/dilation are 2-tuples (or a padding string); typeshed says tuple[int, ...]
    kernel, stride, padding, dilation = cast(Any, (conv.kernel_size, conv.stride, conv.padding, conv.dilation))
    mono = nn.Conv2d(
        1,
        conv.out_channels,
        kernel,
        stride,
        padding,
        dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        mono.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            assert mono.bias is not None  # built with bias=conv.bias is not None
            mono.bias.copy_(conv.bias)
    parent, _, attr = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, attr, mono)
    return net


def has_resnet_stem(net: nn.Module) -> bool:
    """True for torchvision's ResNet family (and look-alikes): a `conv1` Conv2d followed by a `maxpool`."""
    return isinstance(getattr(net, "conv1", None), nn.Conv2d) and isinstance(getattr(net, "maxpool", None), nn.Module)


def adapt_stem(net: nn.Module, stem: str, name: str = "the encoder", image_size: int = 224) -> nn.Module:
    """Replace a ResNet-style stem (`conv1` 7x7/2 + `maxpool`) for small inputs; see the module docstring.

    "standard" returns `net` unchanged. "small": `conv1` becomes a 3x3 stride-1 convolution with the
    same output channels (max-pool kept, output stride 2). "cifar": the same convolution and no
    max-pool (output stride 1; solo-learn / lightly CIFAR recipes). "auto": "small" for a net with a
    ResNet stem at `image_size` <= SMALL_INPUT_MAX, else "standard" (so switching the encoder of a
    config that says "auto" needs no other change). The new convolution is initialised as
    torchvision initialises ResNet convolutions (Kaiming normal, fan_out, ReLU).
    Raises ConfigError for an unknown stem or for "small"/"cifar" on a net without `conv1` + `maxpool`.
    """
    if stem not in STEMS:
        raise ConfigError(f"unknown model.stem {stem!r}; allowed: {', '.join(STEMS)}")
    if stem == "auto":
        stem = "small" if has_resnet_stem(net) and image_size <= SMALL_INPUT_MAX else "standard"
    if stem == "standard":
        return net
    if not has_resnet_stem(net):
        raise ConfigError(
            f"model.stem {stem!r} replaces a ResNet stem (conv1 + maxpool); {name!r} has none: use model.stem=standard"
        )
    conv = net.conv1
    assert isinstance(conv, nn.Conv2d)  # has_resnet_stem checked it
    small = nn.Conv2d(conv.in_channels, conv.out_channels, 3, stride=1, padding=1, bias=conv.bias is not None)
    nn.init.kaiming_normal_(small.weight, mode="fan_out", nonlinearity="relu")
    if small.bias is not None:
        nn.init.zeros_(small.bias)
    net.conv1 = small.to(device=conv.weight.device, dtype=conv.weight.dtype)
    if stem == "cifar":
        net.maxpool = nn.Identity()
    return net
