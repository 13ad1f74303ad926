"""`export.torch_weights`: each version also gets `encoder-NNNNNN.pt`, loadable by torchvision with only `fc.*` missing,
giving the ONNX version's embedding; hashed in the manifest, retained and removed with its version, ignored by the
runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter

from agent.core.config import load_config
from agent.core.errors import ModelFileError
from agent.robot.runtime import HotEncoder
from export.exporter import export_encoder
from export.manifest import read_manifest, verified_artifact
from export.onnx_export import input_spec
from export.publish import Publisher
from export.targets import TARGETS, ExportJob
from tests.export.tiny import scene_frames
from trainer.learner_factory import build_learner

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


TINY = ["model.encoder=tiny_cnn", "model.encoder_kwargs={width: 16}"]  # retention needs no ResNet


def _config(stem: str, *overrides: str):
    return load_config(
        None,
        [
            "model.encoder=resnet18",
            "model.encoder_kwargs={}",
            "model.image_size=32",
            f"model.stem={stem}",
            "model.projection_size=16",
            "model.projection_hidden_size=32",
            "export.torch_weights=true",
            "export.calibration_frames=0",
            *overrides,
        ],
    )


def _publish(cfg, publisher: Publisher, frames: np.ndarray, step: int = 1) -> int:
    torch.manual_seed(step)
    learner = build_learner(cfg.model, cfg.train, "cpu")
    return export_encoder(
        step,
        learner.encoder_module("target"),
        frames,
        export_cfg=cfg.export,
        model_cfg=cfg.model,
        publisher=publisher,
        mean=learner.mean,
        std=learner.std,
    )


def _torchvision_embedding(net: nn.Module, frames: np.ndarray, spec) -> np.ndarray:
    """What a PyTorch policy computes: the hidden layer (avgpool, flattened) of frames normalised as the manifest
    says."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(spec.mean).view(1, -1, 1, 1)) / torch.tensor(spec.std).view(1, -1, 1, 1)
    net.fc = nn.Identity()
    with torch.no_grad():
        return net.eval()(x).numpy()


@pytest.mark.slow
def test_the_published_pt_loads_into_torchvision_and_embeds_as_the_onnx_version(tmp_path: Path) -> None:
    cfg = _config("standard")
    frames = scene_frames(6, 32)
    version = _publish(cfg, Publisher(tmp_path, keep=5), frames)
    manifest = read_manifest(tmp_path / f"encoder-{version:06d}.json")
    path = verified_artifact(tmp_path, manifest, "torch_weights")
    assert path.name == f"encoder-{version:06d}.pt"
    assert manifest.raw["artifacts"]["torch_weights"]["left_out"] == ["fc.bias", "fc.weight"]

    net = torchvision.models.resnet18()
    result = net.load_state_dict(torch.load(path, weights_only=True), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
    feature_map = IntermediateLayerGetter(net, {"layer4": "feature_map"})  # what LeRobot's ACT / Diffusion take
    assert feature_map.eval()(torch.zeros(1, 3, 32, 32))["feature_map"].shape == (1, 512, 1, 1)

    session = ort.InferenceSession(str(tmp_path / manifest.model_file), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {manifest.input.name: manifest.input.prepare(frames)})[0]  # normalised in the graph
    torch_out = _torchvision_embedding(net, manifest.input.fit(frames), manifest.input)
    assert torch_out.shape == onnx_out.shape == (6, 512)
    np.testing.assert_allclose(torch_out, onnx_out, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_a_cifar_stem_pt_loads_into_torchvision_built_with_the_same_stem(tmp_path: Path) -> None:
    """The README's recipe for `model.stem: small|cifar`: the .pt holds a 3x3 conv1, so build that stem first."""
    cfg = _config("cifar", "model.image_size=16")  # the cifar stem keeps full resolution to layer1: small and quick
    learner = build_learner(cfg.model, cfg.train, "cpu")
    encoder = learner.encoder_module("target")
    frames = scene_frames(2, 16)
    job = ExportJob(1, encoder, frames, input_spec("uint8_nhwc", 16, learner.mean, learner.std), cfg.export, cfg.model)
    TARGETS["torch_weights"].write(job, tmp_path / "w.pt")
    state = torch.load(tmp_path / "w.pt", weights_only=True)
    plain = torchvision.models.resnet18()
    with pytest.raises(RuntimeError, match="size mismatch for conv1.weight"):
        plain.load_state_dict(state, strict=False)
    net = torchvision.models.resnet18()
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()  # cifar; `small` keeps the max-pool
    result = net.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
    x = (
        torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255 - torch.tensor(learner.mean).view(1, 3, 1, 1)
    ) / torch.tensor(learner.std).view(1, 3, 1, 1)
    net.fc = nn.Identity()
    with torch.no_grad():
        np.testing.assert_allclose(net.eval()(x).numpy(), encoder(x).numpy(), atol=1e-5, rtol=1e-5)


def test_artifacts_are_hashed_retained_and_removed_with_their_version(tmp_path: Path) -> None:
    cfg = _config("standard", *TINY)
    publisher = Publisher(tmp_path, keep=1)
    frames = scene_frames(6, 32)
    first = _publish(cfg, publisher, frames, step=1)
    second = _publish(cfg, publisher, frames, step=2)
    assert sorted(p.name for p in tmp_path.glob("encoder-*")) == [
        f"encoder-{second:06d}.json",
        f"encoder-{second:06d}.onnx",
        f"encoder-{second:06d}.pt",
    ]  # version 1's .pt went with its model and manifest
    assert first == 1 and second == 2
    manifest = read_manifest(tmp_path / "encoder-000002.json")
    (tmp_path / "encoder-000002.pt").write_bytes(b"tampered")
    with pytest.raises(ModelFileError, match="torch_weights file .* does not match the sha256"):
        verified_artifact(tmp_path, manifest, "torch_weights")
    with HotEncoder(
        tmp_path, wait=True, timeout_s=60
    ) as encoder:  # the runtime serves the ONNX model and ignores the .pt
        assert encoder.embed(frames).shape == (6, 64) and encoder.version == 2


def test_without_the_switch_no_pt_is_written(tmp_path: Path) -> None:
    cfg = _config("standard", *TINY, "export.torch_weights=false")
    version = _publish(cfg, Publisher(tmp_path, keep=5), scene_frames(6, 32))
    manifest = read_manifest(tmp_path / f"encoder-{version:06d}.json")
    assert not list(tmp_path.glob("*.pt")) and "artifacts" not in manifest.raw
    with pytest.raises(ModelFileError, match="has no 'torch_weights' artifact"):
        verified_artifact(tmp_path, manifest, "torch_weights")
