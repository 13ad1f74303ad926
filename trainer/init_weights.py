"""A new run's starting weights from disk: `model.init_weights: PATH`, or a torchvision weights name
(`model.encoder_kwargs.weights: IMAGENET1K_V1`) read from the local torch hub cache. Nothing is downloaded.

The file is a `state_dict` of the wrapped network (torchvision's `resnet18-f37072fd.pth`, an
`encoder-NNNNNN.pt` that `export.torch_weights` published, a `torch.save(net.state_dict())`), or a
checkpoint of ours (its EMA target's network is taken). It is read with `torch.load(weights_only=True)`,
so opening it never runs code. Every key the embedding depends on must be in the file with its shape;
keys of layers after the hidden layer (a classifier `fc.*`) may be missing or differ. Two documented
exceptions: under `model.stem: small|cifar` a torchvision checkpoint's 7x7 `conv1` does not fit the
3x3 stem, so the stem keeps its fresh initialisation (a warning says so) and everything else loads;
a mono encoder (`capture.channels: 1`) gets an RGB first convolution summed over its inputs, as
`trainer.encoders.adapt_input_channels` does. Anything else that does not fit is one ConfigError line.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any, Mapping, Optional
from urllib.parse import urlparse

import torch
import torchvision
from torch import Tensor

from agent.core.config import ModelConfig
from agent.core.errors import ConfigError
from trainer.backbone import used_state_keys
from trainer.byol import BYOL

log = logging.getLogger(__name__)

_SHOWN = 4  # keys named in a one-line error before "..."


def torchvision_weights(encoder: str, name: Any) -> Any:
    """The torchvision weights enum member `name` ("IMAGENET1K_V1", "DEFAULT" or "ResNet18_Weights.IMAGENET1K_V1")
    of the torchvision model `encoder`; ConfigError naming the allowed names otherwise."""
    try:
        enum = torchvision.models.get_model_weights(encoder)
    except (KeyError, ValueError):
        raise ConfigError(
            f"encoder {encoder!r} has no torchvision weights; drop model.encoder_kwargs.weights"
        ) from None
    try:
        return enum.verify(name)
    except (KeyError, ValueError, TypeError):
        allowed = ", ".join(["DEFAULT", *(member.name for member in enum)])
        raise ConfigError(
            f"model.encoder_kwargs.weights {name!r} is not a weights name of {encoder!r}; allowed: {allowed}"
        ) from None


def hub_weights_path(encoder: str, name: Any) -> Path:
    """Where torchvision keeps the weights `name` of `encoder` once downloaded:
    `torch.hub.get_dir()/checkpoints/<file name of the weights' url>` (`$TORCH_HOME/hub/...` when set)."""
    url = torchvision_weights(encoder, name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def init_weights_file(model_cfg: ModelConfig) -> Optional[Path]:
    """The file a new run starts from, or None (random init). ConfigError (one line) when both ways are given,
    or when the named weights are not in the hub cache (the line says which file to put where; nothing is
    downloaded) or the file does not exist."""
    named = model_cfg.encoder_kwargs.get("weights")
    if named is not None and model_cfg.init_weights is not None:
        raise ConfigError("model.init_weights and model.encoder_kwargs.weights both name starting weights; give one")
    if named is not None:
        path = hub_weights_path(model_cfg.encoder, named)
        if not path.is_file():
            url = torchvision_weights(model_cfg.encoder, named).url
            raise ConfigError(
                f"model.encoder_kwargs.weights {named!r}: {path.name} is not in the torch hub cache; nothing is "
                f"downloaded here: put {path.name} (from {url}) at {path}, or set model.init_weights to where it is"
            )
        return path
    if model_cfg.init_weights is None:
        return None
    path = Path(model_cfg.init_weights).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.init_weights {str(path)!r} does not exist")
    return path


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The network's state dict in `path` (see the module docstring for what files are understood).
    ConfigError (one line) for a file that is unreadable, holds code, or holds no tensors by name."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only: anything but tensors and containers is refused, never run
        # our own line: PyTorch's text advises weights_only=False, which would run the file's code
        if isinstance(exc, OSError):
            raise ConfigError(f"model.init_weights {str(path)!r} cannot be read ({exc.strerror or exc})") from None
        if isinstance(exc, pickle.UnpicklingError) and "GLOBAL" in str(exc):  # a global other than torch's
            raise ConfigError(
                f"model.init_weights {str(path)!r} holds Python objects other than tensors; refused "
                "(loading it would run code). Save `model.state_dict()` with torch.save"
            ) from None
        raise ConfigError(
            f"model.init_weights {str(path)!r} is not a PyTorch weights file (what torch.save writes of a state_dict)"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("learner"), dict):  # a checkpoint of ours
        state = state["learner"]
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    tensors = (
        {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, Tensor)}
        if isinstance(state, dict)
        else {}
    )
    if not tensors:
        raise ConfigError(f"model.init_weights {str(path)!r} holds no state_dict (a mapping of names to tensors)")
    for prefix in ("target.backbone.net.", "online.backbone.net.", "module."):  # a learner's, a DDP module's
        if any(key.startswith(prefix) for key in tensors):
            return {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
    return tensors


def _named(keys: list[str]) -> str:
    return ", ".join(keys[:_SHOWN]) + (f", ... ({len(keys)} in all)" if len(keys) > _SHOWN else "")


def fit_state(state: Mapping[str, Tensor], own: Mapping[str, Tensor], used: set[str], source: str) -> dict[str, Tensor]:
    """The entries of `state` to load into a network whose state dict is `own` and whose embedding uses `used`.

    Keys outside `used` are loaded when they fit and otherwise left alone. A stem conv1 of another kernel
    size (`model.stem` small/cifar) is left at its fresh initialisation with a warning; an RGB first
    convolution is summed over its inputs for a one-channel one. ConfigError (one line naming the keys) for
    used keys missing from the file, keys the network does not have, or used keys of another shape.
    """
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise ConfigError(f"{source} has keys the network does not: {_named(unexpected)}; is it the same architecture?")
    missing = sorted(used - set(state))
    if missing:
        raise ConfigError(f"{source} lacks keys the network's embedding uses: {_named(missing)}")
    fitted, wrong = {}, []
    for key, value in state.items():
        shape = tuple(own[key].shape)
        if tuple(value.shape) == shape:
            fitted[key] = value
        elif key not in used:
            continue  # a classifier after the hidden layer of another size: never runs
        elif key == "conv1.weight" and value.ndim == 4 and value.shape[2:] != own[key].shape[2:]:
            log.warning(
                "%s: its conv1 is %dx%d and model.stem builds a %dx%d one; the stem keeps its fresh "
                "initialisation, every other layer loads (set model.stem to the file's stem, standard for a "
                "torchvision checkpoint, to load it too)",
                source,
                *value.shape[2:],
                *own[key].shape[2:],
            )
        elif (
            value.ndim == 4
            and value.shape[1] == 3
            and shape[1] == 1
            and tuple(value.shape[2:]) == shape[2:]
            and value.shape[0] == shape[0]
        ):
            fitted[key] = value.sum(dim=1, keepdim=True)  # RGB -> mono as adapt_input_channels
        else:
            wrong.append(f"{key} {tuple(value.shape)} vs {shape}")
    if wrong:
        raise ConfigError(f"{source} has tensors of other shapes than the network's: {_named(wrong)}")
    return fitted


@torch.no_grad()
def load_initial_weights(learner: BYOL, model_cfg: ModelConfig) -> Optional[Path]:
    """Load the starting weights `init_weights_file(model_cfg)` names into `learner`'s network, then make the
    target (parameters and BatchNorm buffers) equal to the online branch. Returns the file, or None when
    the config names none. For a new run only: a resumed run continues from its checkpoint.
    ConfigError (one line) as `init_weights_file`, `read_state_dict` and `fit_state`."""
    path = init_weights_file(model_cfg)
    if path is None:
        return None
    source = f"model.init_weights {str(path)!r}"
    state = read_state_dict(path)
    net = learner.net
    used = used_state_keys(learner.online.backbone, model_cfg.image_hw, learner.channels)
    fitted = fit_state(state, net.state_dict(), used, source)
    net.load_state_dict(fitted, strict=False)
    if learner.target is not None:
        learner.target.load_state_dict(learner.online.state_dict())
    left = sorted(set(net.state_dict()) - set(fitted))
    log.info("started from %s (%d tensors%s)", path, len(fitted), f"; kept fresh: {_named(left)}" if left else "")
    return path
