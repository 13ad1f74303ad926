"""A run started from weights on disk (`model.init_weights`, `model.encoder_kwargs.weights`), with real files:
torchvision state dicts written here (random init, nothing downloaded) and a fake torch hub cache (TORCH_HOME)."""

from __future__ import annotations

import collections
import logging
import threading
from pathlib import Path

import pytest
import torch
import torchvision

from agent.core.config import load_config
from agent.core.errors import ConfigError
from agent.pipeline import build_trainer
from tests.conftest import free_tcp_endpoint
from tests.trainer.test_continual import Feeder, tiny_config
from trainer.init_weights import load_initial_weights
from trainer.learner_factory import build_learner

RESNET = ["model.encoder=resnet18", "model.encoder_kwargs={}", "model.image_size=32", "model.stem=standard"]


def torchvision_file(path: Path, seed: int = 7) -> dict[str, torch.Tensor]:
    """A torchvision resnet18 state dict as torchvision's checkpoints hold it (fc included), with BatchNorm
    statistics moved off their defaults so that buffers are checked too; saved at `path`."""
    torch.manual_seed(seed)
    net = torchvision.models.resnet18()
    state = net.state_dict()
    for key, value in state.items():
        if key.endswith("running_mean"):
            value.normal_()
        elif key.endswith("running_var"):
            value.uniform_(0.5, 2.0)
        elif key.endswith("num_batches_tracked"):
            value.fill_(1234)
    torch.save(state, path)
    return {k: v.clone() for k, v in state.items()}


def assert_net_equals(net: torch.nn.Module, state: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> None:
    own = net.state_dict()
    for key, value in state.items():
        if key not in skip:
            assert torch.equal(own[key].cpu(), value), key


@pytest.mark.slow
def test_a_run_starts_from_a_state_dict_file_online_and_target_equal_to_it(tmp_path: Path) -> None:
    path = tmp_path / "resnet18-random.pth"
    state = torchvision_file(path)
    cfg = tiny_config(free_tcp_endpoint(), *RESNET, f"model.init_weights={path}", "train.max_steps=3")
    trainer = build_trainer(cfg, tmp_path / "run")
    learner = trainer.learner
    assert trainer.step == 0
    assert_net_equals(learner.net, state)  # the classifier too: it fits, though it never runs
    assert_net_equals(learner.target.backbone.net, state)  # BatchNorm buffers included
    with Feeder(cfg.wire.endpoint):
        trainer.run(threading.Event())
    assert trainer.step == 3
    moved = learner.net.state_dict()["layer1.0.conv1.weight"].cpu()
    assert not torch.equal(moved, state["layer1.0.conv1.weight"])  # it trained from there

    path.unlink()  # a resumed run continues from its checkpoint and never reads the file again
    resumed = build_trainer(cfg, tmp_path / "run")
    assert resumed.resumed_from is not None and resumed.step == 3


def test_a_torchvision_weights_name_loads_from_the_hub_cache_or_says_where_to_put_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = load_config(
        None,
        [
            *RESNET,
            "model.encoder_kwargs={weights: IMAGENET1K_V1}",
            "model.projection_size=16",
            "model.projection_hidden_size=32",
        ],
    )
    learner = build_learner(cfg.model, cfg.train, "cpu")  # the name is checked, nothing loaded or downloaded
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(ConfigError) as missing:
        load_initial_weights(learner, cfg.model)
    assert str(missing.value) == (
        "model.encoder_kwargs.weights 'IMAGENET1K_V1': resnet18-f37072fd.pth is not in the torch hub cache; nothing is "
        "downloaded here: put resnet18-f37072fd.pth (from https://download.pytorch.org/models/resnet18-f37072fd.pth) "
        f"at {expected}, or set model.init_weights to where it is"
    )
    expected.parent.mkdir(parents=True)
    state = torchvision_file(expected)
    assert load_initial_weights(learner, cfg.model) == expected
    assert_net_equals(learner.net, state)
    assert_net_equals(learner.target.backbone.net, state)

    with pytest.raises(
        ConfigError, match="'IMAGENET1K_V9' is not a weights name of 'resnet18'; allowed: DEFAULT, IMAGENET1K_V1"
    ):
        build_learner(
            load_config(None, [*RESNET, "model.encoder_kwargs={weights: IMAGENET1K_V9}"]).model, cfg.train, "cpu"
        )


def _learner(*overrides: str):
    cfg = load_config(None, [*RESNET, "model.projection_size=16", "model.projection_hidden_size=32", *overrides])
    return build_learner(cfg.model, cfg.train, "cpu"), cfg.model


@pytest.mark.slow
def test_keys_that_do_not_fit_are_one_line_errors_and_the_unused_classifier_may_be_missing(tmp_path: Path) -> None:
    state = torchvision_file(tmp_path / "full.pth")
    cases = {
        "no-fc.pt": ({k: v for k, v in state.items() if not k.startswith("fc.")}, None),  # what we export
        "no-layer1.pt": (
            {k: v for k, v in state.items() if not k.startswith("layer1.0.conv1")},
            r"lacks keys the network's embedding uses: layer1.0.conv1.weight$",
        ),
        "extra.pt": ({**state, "head.weight": torch.zeros(3)}, r"has keys the network does not: head.weight; is it"),
        "other-fc.pt": ({**state, "fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)}, None),  # never runs
        "wide.pt": (
            {**state, "layer1.0.conv1.weight": torch.zeros(64, 64, 5, 5)},
            r"other shapes than the network's: layer1.0.conv1.weight \(64, 64, 5, 5\) vs \(64, 64, 3, 3\)$",
        ),
        "mobilenet.pt": (
            torchvision.models.mobilenet_v3_small().state_dict(),
            r"has keys the network does not: .*\(\d+ in all\)",
        ),
    }
    for name, (content, error) in cases.items():
        torch.save(content, tmp_path / name)
        learner, model_cfg = _learner(f"model.init_weights={tmp_path / name}")
        if error is None:
            load_initial_weights(learner, model_cfg)
            assert_net_equals(learner.net, content, skip=("fc.weight", "fc.bias"))
        else:
            with pytest.raises(ConfigError, match=error):
                load_initial_weights(learner, model_cfg)


class _Code:
    def __reduce__(self):
        return (print, ("this ran",))


def test_a_file_that_holds_code_is_refused_not_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.save({"conv1.weight": _Code()}, tmp_path / "evil.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "notes.txt").write_text("hello\nworld\n")
    (tmp_path / "zip.pt").write_bytes(b"PK\x03\x04 not a zip")
    expected = {
        "evil.pt": r"evil.pt' holds Python objects other than tensors; refused \(loading it would run code\)",
        "garbage.pt": "garbage.pt' is not a PyTorch weights file",
        "notes.txt": "notes.txt' is not a PyTorch",
        "zip.pt": "zip.pt' is not a PyTorch weights file",
    }
    for name, message in expected.items():
        learner, model_cfg = _learner(f"model.init_weights={tmp_path / name}")
        with pytest.raises(ConfigError, match=message) as info:
            load_initial_weights(learner, model_cfg)
        text = str(info.value)  # our own whole line: never PyTorch's advice to load with weights_only=False
        assert "\n" not in text and "weights_only" not in text and text.rstrip().endswith((")", "torch.save")), text
    assert "this ran" not in capsys.readouterr().out
    learner, model_cfg = _learner(f"model.init_weights={tmp_path / 'absent.pt'}")
    with pytest.raises(ConfigError, match="absent.pt' does not exist"):
        load_initial_weights(learner, model_cfg)


def test_a_small_stem_keeps_its_own_conv1_and_loads_the_rest(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A torchvision checkpoint's conv1 is 7x7; `model.stem=small|cifar` builds a 3x3 one: documented behaviour is
    a warning, the stem freshly initialised, every other tensor loaded."""
    state = torchvision_file(tmp_path / "resnet18.pth")
    learner, model_cfg = _learner("model.stem=cifar", f"model.init_weights={tmp_path / 'resnet18.pth'}")
    fresh = learner.net.conv1.weight.detach().clone()
    with caplog.at_level(logging.WARNING, logger="trainer.init_weights"):
        load_initial_weights(learner, model_cfg)
    assert "its conv1 is 7x7 and model.stem builds a 3x3 one; the stem keeps its fresh initialisation" in caplog.text
    assert torch.equal(learner.net.conv1.weight, fresh)
    assert_net_equals(learner.net, state, skip=("conv1.weight",))


def test_a_checkpoint_of_ours_starts_a_new_run_from_its_ema_target(tmp_path: Path) -> None:
    learner, model_cfg = _learner()
    with torch.no_grad():
        for param in learner.target.parameters():
            param.add_(1.0)  # target differs from online: the file's target is what must load
    torch.save({"learner": learner.state_dict(), "step": 5}, tmp_path / "ckpt.pt")
    fresh, _ = _learner(f"model.init_weights={tmp_path / 'ckpt.pt'}")
    load_initial_weights(fresh, model_cfg.model_copy(update={"init_weights": str(tmp_path / "ckpt.pt")}))
    expected = collections.OrderedDict(learner.target.backbone.net.state_dict())
    assert_net_equals(fresh.net, expected)
    assert_net_equals(fresh.target.backbone.net, expected)
