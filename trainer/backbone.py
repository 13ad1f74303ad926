"""The wrapped net cut at its hidden layer: images -> flat (N, D) embedding.

The layer is named as in byol-pytorch: a name from `net.named_modules()`, an index into
`net.children()`, or -1 for the net's own output. A module that runs more than once in one forward
(torchvision's BasicBlock calls its one `relu` twice) is read at its LAST call, as byol-pytorch's
hook (which keeps overwriting) reads it. The layer's output is captured by a forward hook that
exists only for the duration of one call, so

- the first forward runs the whole net and counts the hidden layer's calls; every later one stops
  the forward right at the last call: nothing after it runs (a ResNet's `fc` costs nothing and
  gets no gradient) and every parameter up to it gets a gradient,
- a deep copy or an ONNX trace of the wrapper carries no hooks,
- under graph capture (torch.export, the dynamo ONNX exporter, torch.compile) the hook only
  records and the net runs on: the layers after the hidden one are dead code (the ONNX exporter drops it),
- wherever the net runs on past the hidden layer, it runs on a copy of the captured output, so an
  in-place op after it (DenseNet's `F.relu(features, inplace=True)`) cannot change the embedding,
- two copies (online and target, or DataParallel replicas) never share capture state.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional, TypeVar, Union

import torch
from torch import Tensor, nn

from agent.core.errors import ConfigError

ModuleT = TypeVar("ModuleT", bound=nn.Module)

HiddenLayer = Union[str, int]


class _HiddenReached(Exception):
    """Carries the hidden layer's output out of the net's forward, skipping the layers after it."""

    def __init__(self, output: Tensor) -> None:
        super().__init__()
        self.output = output


def find_layer(net: nn.Module, layer: HiddenLayer) -> Optional[nn.Module]:
    """The module whose output is the embedding (None for -1: the net's output); ConfigError if absent."""
    if isinstance(layer, bool) or not isinstance(layer, (str, int)):
        raise ConfigError(f"hidden_layer must be a module name, a child index or -1; got {layer!r}")
    if layer == -1:
        return None
    if isinstance(layer, str):
        if layer:
            try:
                return net.get_submodule(layer)
            except AttributeError:
                pass
        names = [name for name, _ in net.named_children()]
        raise ConfigError(
            f"hidden layer {layer!r} not found in {type(net).__name__}; "
            f"top-level modules: {', '.join(names)} (use a dotted name for nested ones, or -1 for the output)"
        )
    children = list(net.children())
    if not -len(children) <= layer < len(children):
        raise ConfigError(
            f"hidden layer index {layer} is out of range: {type(net).__name__} has {len(children)} children"
        )
    return children[layer]


class Backbone(nn.Module):
    """`net` up to and including its hidden layer, returning that layer's (last) output flattened to (N, D).

    `calls`: how many times the hidden layer ran in the first forward (None before it); later
    forwards stop at that call. A net whose call count depends on the input is read at the
    measured call, or at its last when it runs fewer times.
    """

    def __init__(self, net: nn.Module, layer: HiddenLayer = -2) -> None:
        super().__init__()
        find_layer(net, layer)
        self.net = net
        self.layer = layer
        self.calls: Optional[int] = None

    def forward(self, images: Tensor) -> Tensor:
        module = find_layer(self.net, self.layer)
        if module is None:
            return _flat(self.net(images), self.layer)
        if torch.compiler.is_compiling() or self.calls is None:  # graph capture, or the first forward
            return self._forward_to_end(images, module)

        seen: list[Tensor] = []

        def stop(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
            seen.append(output)
            if len(seen) == self.calls:
                raise _HiddenReached(output)

        handle = module.register_forward_hook(stop)
        try:
            self.net(images)
        except _HiddenReached as reached:
            return _flat(reached.output, self.layer)
        finally:
            handle.remove()
        if not seen:
            raise self._never_ran()
        return _flat(seen[-1], self.layer)  # ran fewer times than at the first forward: its last call

    def _forward_to_end(self, images: Tensor, module: nn.Module) -> Tensor:
        """The hidden layer's last output, taken by a hook that does not stop the forward; counts its calls.

        For graph capture: an exception unwinding out of a submodule's call leaves torch.export's
        module-stack bookkeeping behind (`Unexpected key ..._export_root.encoder.net.avgpool,
        expected ..._export_root.encoder`), so here the net runs to its end and the layers after
        the hidden one become dead code (their output is unused; the ONNX exporter drops it).
        The hook hands the net a clone to carry on with and keeps the original, so in-place ops
        after the layer change neither the embedding nor what its backward needs.
        """
        captured: list[Tensor] = []

        def keep(_module: nn.Module, _inputs: tuple, output: Tensor) -> Optional[Tensor]:
            captured.append(output)
            return output.clone() if isinstance(output, Tensor) else None

        handle = module.register_forward_hook(keep)
        try:
            self.net(images)
        finally:
            handle.remove()
        if not captured:
            raise self._never_ran()
        if not torch.compiler.is_compiling():
            self.calls = len(captured)
        return _flat(captured[-1], self.layer)

    def _never_ran(self) -> ConfigError:
        return ConfigError(f"hidden layer {self.layer!r} exists but never ran in {type(self.net).__name__}'s forward")


def _flat(output: object, layer: HiddenLayer) -> Tensor:
    if not isinstance(output, Tensor):
        raise ConfigError(f"hidden layer {layer!r} outputs {type(output).__name__}, not a tensor; pick another layer")
    return output.flatten(1)


@contextmanager
def eval_mode(module: ModuleT) -> Iterator[ModuleT]:
    """`module` in eval mode for the block; every submodule's own training flag is restored after."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in flags:
            m.training = training


def first_conv_channels(net: nn.Module) -> Optional[int]:
    """Input channels of the first `nn.Conv2d` in `net.modules()` order (None if it has none, or a lazy one)."""
    for module in net.modules():
        if isinstance(module, nn.Conv2d) and module.in_channels > 0:
            return module.in_channels
    return None


def probe(backbone: Backbone, image_size: Union[int, tuple[int, int]], channels: int = 3) -> tuple[int, list[str]]:
    """Embedding width, and names of `backbone.net` parameters the embedding does not depend on.

    Probed with two zero images of `channels` x `image_size` (one side or (height, width)).

    One forward in eval mode (BatchNorm running statistics never move; every module's own training
    flag is restored afterwards) and one `autograd.grad` (no `.grad` is written). The unused names
    tell DDP which parameters will never receive a gradient.
    """
    net = backbone.net
    reference = next(net.parameters(), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    trainable = [(name, p) for name, p in net.named_parameters() if p.requires_grad]
    grads: tuple[Optional[Tensor], ...]
    with eval_mode(backbone), torch.enable_grad():
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        hidden = backbone(torch.zeros(2, channels, height, width, device=device, dtype=dtype))
        if hidden.requires_grad and trainable:
            grads = torch.autograd.grad(hidden.sum(), [p for _, p in trainable], allow_unused=True)
        else:
            grads = (None,) * len(trainable)
    unused = [name for (name, _), grad in zip(trainable, grads) if grad is None]
    return hidden.shape[1], unused


def used_state_keys(backbone: Backbone, image_size: Union[int, tuple[int, int]], channels: int = 3) -> set[str]:
    """Keys of `backbone.net.state_dict()` that the embedding depends on: those of every module that runs up to
    the hidden layer, found by one eval-mode forward of zero images with a pre-hook on each module.

    What is left out belongs to modules after the hidden layer (a ResNet's `fc` for `avgpool`): never run,
    never trained, so an exported state dict leaves it out and an initial one need not have it.
    """
    net = backbone.net
    ran: set[str] = set()
    handles = [
        module.register_forward_pre_hook(lambda _m, _i, name=name: ran.add(name))
        for name, module in net.named_modules()
    ]
    reference = next(net.parameters(), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    try:
        with eval_mode(backbone), torch.no_grad():
            backbone(torch.zeros(2, channels, height, width, device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
    used: set[str] = set()
    for name, module in net.named_modules():
        if name in ran:
            prefix = f"{name}." if name else ""
            used.update(prefix + key for key in module.state_dict(keep_vars=True) if "." not in key)
    return used
