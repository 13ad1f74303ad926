"""Hidden-layer capture: byol-pytorch's layer semantics, a forward that stops there, a probe that moves nothing."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from agent.core.errors import ConfigError
from trainer.backbone import Backbone, eval_mode, find_layer, probe
from trainer.encoders import TinyCNN


def tiny(seed: int = 0) -> TinyCNN:
    torch.manual_seed(seed)
    return TinyCNN(width=4)


def test_layer_by_name_child_index_and_output() -> None:
    net = tiny().eval()
    x = torch.rand(3, 3, 12, 12)
    pooled = net.avgpool(net.features(x)).flatten(1)
    torch.testing.assert_close(Backbone(net, "avgpool")(x), pooled)
    torch.testing.assert_close(Backbone(net, -2)(x), pooled)  # children: features, avgpool, fc
    torch.testing.assert_close(Backbone(net, 0)(x), net.features(x).flatten(1))
    torch.testing.assert_close(Backbone(net, "features.2")(x), net.features[:3](x).flatten(1))
    torch.testing.assert_close(Backbone(net, -1)(x), net(x))


def test_forward_stops_at_the_hidden_layer_and_leaves_no_hook() -> None:
    net = tiny()
    calls = []
    handle = net.fc.register_forward_hook(lambda *args: calls.append(1))
    Backbone(net, "avgpool")(torch.rand(2, 3, 12, 12))
    handle.remove()
    assert calls == [], "layers after the hidden layer must not run"
    assert all(not m._forward_hooks for m in net.modules())


def test_gradients_flow_through_the_captured_output() -> None:
    net = tiny()
    Backbone(net, "avgpool")(torch.rand(2, 3, 12, 12)).sum().backward()
    assert net.features[0].weight.grad is not None and net.fc.weight.grad is None


def test_probe_measures_width_and_unused_parameters_without_moving_anything() -> None:
    net = tiny()
    net.features[4].eval()  # a user-frozen BN keeps its flag
    flags = [m.training for m in net.modules()]
    before = copy.deepcopy(net.state_dict())
    dim, unused = probe(Backbone(net, "avgpool"), image_size=12)
    assert dim == 16
    assert unused == ["fc.weight", "fc.bias"]
    assert [m.training for m in net.modules()] == flags
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())
    assert probe(Backbone(net, -1), image_size=12) == (10, [])


def test_eval_mode_restores_each_module_flag_even_on_error() -> None:
    net = tiny()
    net.features[1].eval()
    flags = [m.training for m in net.modules()]
    with pytest.raises(RuntimeError), eval_mode(net):
        assert not any(m.training for m in net.modules())
        raise RuntimeError("boom")
    assert [m.training for m in net.modules()] == flags


@pytest.mark.parametrize(
    "layer, message",
    [
        ("avgpol", "hidden layer 'avgpol' not found in TinyCNN; top-level modules: features, avgpool, fc"),
        ("features.9", "'features.9' not found"),
        ("", "not found"),
        (3, "index 3 is out of range: TinyCNN has 3 children"),
        (-4, "out of range"),
        (1.5, "module name, a child index or -1"),
        (True, "module name, a child index or -1"),
    ],
)
def test_bad_layers_name_the_problem(layer, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        find_layer(tiny(), layer)


def test_a_layer_that_never_runs_is_reported() -> None:
    net = tiny()
    net.unused = nn.Identity()
    with pytest.raises(ConfigError, match="never ran"):
        Backbone(net, "unused")(torch.rand(2, 3, 12, 12))


def test_torch_export_captures_the_hidden_layer_and_drops_the_layers_after_it() -> None:
    """The dynamo ONNX exporter traces with torch.export: the cut must not unwind through a module call."""
    net = tiny().eval()
    x = torch.rand(3, 3, 12, 12)
    program = torch.export.export(Backbone(net, "avgpool").eval(), (x,), strict=False)
    torch.testing.assert_close(program.module()(x), net.avgpool(net.features(x)).flatten(1))
    assert all(not m._forward_hooks for m in net.modules())
