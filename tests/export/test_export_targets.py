"""Every registered export target (export/targets/, `TARGETS`) meets one contract, so a new target is tested by
being registered: switched on, it is written with its version, listed and hashed in the manifest, and its
file read back with its format's own reader gives the encoder's embedding; switched off (the default), only
the model is published. Real files from a tiny trained-from-scratch encoder, read back by onnxruntime and
`torch.load`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from agent.core.config import Config, load_config
from export.exporter import export_encoder
from export.manifest import Manifest, read_manifest, verified_artifact
from export.publish import Publisher
from export.targets import MODEL_TARGET, TARGETS
from export.verify import torch_reference
from tests.export.tiny import scene_frames
from trainer.learner_factory import build_learner

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TINY = [
    "model.encoder=tiny_cnn",
    "model.encoder_kwargs={width: 16}",
    "model.image_size=32",
    "model.projection_size=16",
    "model.projection_hidden_size=32",
    "export.calibration_frames=0",
]


def _onnx_embedding(path: Path, manifest: Manifest, cfg: Config, frames: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([manifest.output_name], {manifest.input.name: frames})[0]


def _torch_weights_embedding(path: Path, manifest: Manifest, cfg: Config, frames: np.ndarray) -> np.ndarray:
    torch.manual_seed(12345)  # another initialisation: only the loaded tensors can make it embed as the export
    encoder = build_learner(cfg.model, cfg.train, "cpu").encoder_module("target")
    missing, unexpected = encoder.net.load_state_dict(torch.load(path, weights_only=True), strict=False)
    assert not unexpected
    return torch_reference(encoder, frames, manifest.input)


# Each target's switch in the config and the reader of its file (its format's own): a new target adds both here.
SWITCHES: dict[str, list[str]] = {"onnx": [], "torch_weights": ["export.torch_weights=true"]}
READERS: dict[str, Callable[[Path, Manifest, Config, np.ndarray], np.ndarray]] = {
    "onnx": _onnx_embedding,
    "torch_weights": _torch_weights_embedding,
}


def _export(cfg: Config, export_dir: Path, frames: np.ndarray) -> tuple[nn.Module, Manifest]:
    torch.manual_seed(1)
    learner = build_learner(cfg.model, cfg.train, "cpu")
    encoder = learner.encoder_module("target")
    version = export_encoder(
        1,
        encoder,
        frames,
        export_cfg=cfg.export,
        model_cfg=cfg.model,
        publisher=Publisher(export_dir, keep=5),
        mean=learner.mean,
        std=learner.std,
    )
    return encoder, read_manifest(export_dir / f"encoder-{version:06d}.json")


def test_the_model_target_is_registered_and_always_written() -> None:
    assert MODEL_TARGET in TARGETS and TARGETS[MODEL_TARGET].wanted(load_config(None, []).export)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_contract(name: str, tmp_path: Path) -> None:
    if name not in SWITCHES or name not in READERS:
        pytest.fail(f"export target {name!r} has no switch or reader in tests/export/test_export_targets.py")
    target = TARGETS[name]
    assert target.name == name and target.suffix.startswith(".")
    frames = scene_frames(6, 32)

    cfg = load_config(None, [*TINY, *SWITCHES[name]])
    assert target.wanted(cfg.export)
    encoder, manifest = _export(cfg, tmp_path / "on", frames)
    if name == MODEL_TARGET:
        path = tmp_path / "on" / manifest.model_file
    else:
        path = verified_artifact(tmp_path / "on", manifest, name)  # listed, and its sha256 matches
    assert path.name == f"encoder-{manifest.version:06d}{target.suffix}"
    read_back = READERS[name](path, manifest, cfg, frames)
    np.testing.assert_allclose(read_back, torch_reference(encoder, frames, manifest.input), rtol=1e-4, atol=1e-4)

    default = load_config(None, TINY)
    _, plain = _export(default, tmp_path / "off", frames)
    written = sorted(p.suffix for p in (tmp_path / "off").glob("encoder-*") if p.suffix != ".json")
    expected = sorted(t.suffix for t in TARGETS.values() if t.wanted(default.export))
    assert written == expected and (target.suffix in written) == target.wanted(default.export)
    assert name == MODEL_TARGET or name not in (plain.raw.get("artifacts") or {})
