"""Hidden-layer capture: byol-pytorch's layer semantics, a forward that stops there, a probe that moves nothing."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.models import resnet

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
    backbone = Backbone(net, "avgpool")
    backbone(torch.rand(2, 3, 12, 12))  # the first forward runs to the end: it counts the hidden layer's calls
    assert backbone.calls == 1
    calls = []
    handle = net.fc.register_forward_hook(lambda *args: calls.append(1))
    backbone(torch.rand(2, 3, 12, 12))
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


def _basic_block_resnet() -> nn.Module:
    torch.manual_seed(0)
    return resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 1], num_classes=4)


def test_a_module_called_twice_is_read_at_its_last_call_as_byol_pytorch_does() -> None:
    """torchvision's BasicBlock calls its one `relu` twice: the block's output is that relu's last call."""
    net = _basic_block_resnet().eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        block_out = net.layer4[0](net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x))))))))
    backbone = Backbone(net, "layer4.0.relu")
    for _ in range(2):  # the first forward counts the calls, the later ones stop at the last
        torch.testing.assert_close(backbone(x), block_out.flatten(1))
    program = torch.export.export(backbone, (x,), strict=False)
    torch.testing.assert_close(program.module()(x), block_out.flatten(1))


def test_every_parameter_up_to_a_repeated_hidden_module_gets_a_gradient() -> None:
    net = _basic_block_resnet()
    dim, unused = probe(Backbone(net, "layer4.0.relu"), image_size=32)
    assert dim == 512 and unused == ["fc.weight", "fc.bias"]
    Backbone(net, "layer4.0.relu")(torch.rand(2, 3, 32, 32)).sum().backward()
    assert [name for name, p in net.named_parameters() if p.grad is None] == ["fc.weight", "fc.bias"]


class _InPlaceAfterHidden(nn.Module):
    """DenseNet's ending: `features` (ending in BatchNorm), then an in-place ReLU on its output."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.classifier = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.relu(self.features(x), inplace=True)
        return self.classifier(nn.functional.adaptive_avg_pool2d(out, 1).flatten(1))


def test_an_in_place_op_after_the_hidden_layer_does_not_reach_the_embedding_under_graph_capture() -> None:
    torch.manual_seed(0)
    net = _InPlaceAfterHidden().eval()
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        expected = net.features(x).flatten(1)
    assert (expected < 0).any()  # the ReLU would change it
    backbone = Backbone(net, "features").eval()
    program = torch.export.export(backbone, (x,), strict=False)
    torch.testing.assert_close(program.module()(x), expected)
    torch.testing.assert_close(backbone(x), expected)
