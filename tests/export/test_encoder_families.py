"""Every encoder family the config accepts, with both exporters: export → verify → publish → HotEncoder.

Each case goes the way a run does: the config (YAML + overrides), the learner built from it, the
eval copy of its target encoder that the trainer hands to the exporter, `export_encoder` (checker and
onnxruntime parity on real frames inside), then `HotEncoder` serving non-square camera frames at two
batch sizes, compared with the torch encoder. Families are torchvision's own classes (and a custom net); see
tests/export/families.py for why most are built with fewer blocks here, and the slow tier at the end
for the named variants (vit_b_16 included) as a user would configure them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Union

import numpy as np
import pytest

from agent.core.config import Config, ExportConfig, ModelConfig, load_config
from agent.core.demo_scene import DemoScene
from agent.core.errors import ConfigError
from agent.robot.runtime import HotEncoder
from export.exporter import export_encoder
from export.manifest import read_manifest
from export.onnx_export import check_exportable
from export.publish import Publisher
from export.verify import torch_reference
from trainer.learner_factory import build_learner

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
    pytest.mark.slow,
]

F = "tests.export.families"
IMAGE_SIZE = 32
CAMERA = (36, 52)  # non-square camera frames (H, W); capture stores them non-square too
STORED = (30, 40)
EXPORTERS = ("torchscript", "dynamo")
HiddenLayer = Union[int, str]

# id -> (model.encoder, model.encoder_kwargs, model.hidden_layer)
FAMILIES: dict[str, tuple[str, dict[str, Any], HiddenLayer]] = {
    "resnet": (f"{F}:tiny_resnet", {}, "avgpool"),
    "mobilenet_v3": (f"{F}:tiny_mobilenet_v3", {}, "avgpool"),
    "efficientnet": (f"{F}:tiny_efficientnet", {}, "avgpool"),
    "convnext": (f"{F}:tiny_convnext", {}, "avgpool"),
    "regnet": (f"{F}:tiny_regnet_y", {}, "avgpool"),
    "vit": (f"{F}:tiny_vit", {"image_size": IMAGE_SIZE}, "encoder"),
    "densenet": (f"{F}:tiny_densenet", {}, -2),  # `features`: the forward's in-place ReLU runs after it
    "resnet-repeated-relu": (f"{F}:tiny_resnet", {}, "layer4.0.relu"),  # a BasicBlock calls its relu twice
    "custom-by-name": (f"{F}:custom_net", {}, "body.1"),  # a dotted name: nested module
    "custom-by-index": (f"{F}:custom_net", {}, -2),
    "custom-output": (f"{F}:custom_net", {}, -1),
}

# The named variants a user configures; minutes on 2 CPU cores, so opt-in (BYOL_AGENT_SLOW_TESTS=1).
NAMED: dict[str, tuple[str, dict[str, Any], HiddenLayer]] = {
    "resnet18": ("resnet18", {}, "avgpool"),
    "mobilenet_v3_small": ("mobilenet_v3_small", {}, "avgpool"),
    "efficientnet_b0": ("efficientnet_b0", {}, "avgpool"),
    "convnext_tiny": ("convnext_tiny", {}, "avgpool"),
    "regnet_y_400mf": ("regnet_y_400mf", {}, "avgpool"),
    "vit_b_16": ("vit_b_16", {"image_size": IMAGE_SIZE}, "encoder"),
}


def camera_frames(n: int, seed: int) -> np.ndarray:
    """`n` uint8 RGB demo-scene frames of CAMERA size, far enough apart in time to differ."""
    scene = DemoScene(*CAMERA, seed=seed)
    return np.stack([scene.render(0.53 * i) for i in range(n)])


def family_config(encoder: str, kwargs: dict[str, Any], layer: HiddenLayer, exporter: str) -> Config:
    return load_config(
        None,
        values={
            "model.encoder": encoder,
            "model.encoder_kwargs": kwargs,
            "model.hidden_layer": layer,
            "model.image_size": IMAGE_SIZE,
            "model.projection_size": 16,
            "model.projection_hidden_size": 32,
            "capture.height": STORED[0],
            "capture.width": STORED[1],
            "export.exporter": exporter,
            "export.verify_batch": 4,
        },
    )


def export_and_serve(tmp_path: Path, encoder: str, kwargs: dict[str, Any], layer: HiddenLayer, exporter: str) -> None:
    cfg = family_config(encoder, kwargs, layer, exporter)
    learner = build_learner(cfg.model, cfg.train, "cpu", cfg.augment)
    module = learner.encoder_module("target")  # what the trainer hands to the exporter
    export_dir = tmp_path / "exports"
    version = export_encoder(
        7,
        module,
        camera_frames(12, seed=1),
        export_cfg=cfg.export,
        model_cfg=cfg.model,
        publisher=Publisher(export_dir, cfg.export.keep),
        mean=learner.mean,
        std=learner.std,
        capture=cfg.capture,
    )
    manifest = read_manifest(export_dir / f"encoder-{version:06d}.json")
    assert manifest.raw["exporter"] == exporter and manifest.raw["model"]["hidden_layer"] == layer
    frames = camera_frames(5, seed=2)
    spec = manifest.input
    expected = torch_reference(module, spec.fit(frames), spec)
    assert manifest.output_dim == expected.shape[1]
    # Random-init deep nets (mobilenet_v3_small, efficientnet_b0 at 32 px) give embeddings of ~1e-9:
    # an absolute tolerance would pass anything there, so compare relative to the embedding's scale.
    scale = float(np.abs(expected).max())
    unit = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    assert scale > 0 and np.abs(unit[0] - unit[-1]).max() > 1e-3  # the frames really differ
    with HotEncoder(export_dir, providers="cpu", wait=False, threads=1) as served:
        assert served.version == version
        for batch in (1, 5):  # the export example is batch 2, verification ran 4 and 1
            got = served.embed(frames[:batch])
            assert got.shape == expected[:batch].shape and got.dtype == np.float32
            np.testing.assert_allclose(got, expected[:batch], atol=1e-4 * scale, rtol=0)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_encoder_family_exports_and_serves(tmp_path: Path, family: str, exporter: str) -> None:
    export_and_serve(tmp_path, *FAMILIES[family], exporter)


@pytest.mark.skipif(not os.environ.get("BYOL_AGENT_SLOW_TESTS"), reason="minutes on CPU: set BYOL_AGENT_SLOW_TESTS=1")
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", list(NAMED))
def test_named_variants_export_and_serve(tmp_path: Path, name: str, exporter: str) -> None:
    start = time.monotonic()
    export_and_serve(tmp_path, *NAMED[name], exporter)
    print(f"{name} {exporter}: {time.monotonic() - start:.1f} s")


def test_train_refuses_an_encoder_its_exporter_cannot_write_before_training(tmp_path: Path) -> None:
    """AlexNet at 64 px runs, but TorchScript cannot export its 1x1 → 6x6 adaptive pooling: no run may start."""
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "train",
            "--run-dir",
            str(run_dir),
            "model.encoder=alexnet",
            "model.encoder_kwargs={}",
            "model.image_size=64",
            "export.exporter=torchscript",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "model.encoder='alexnet'" in lines[0] and "export.exporter=torchscript" in lines[0]
    assert not (run_dir / "checkpoints").exists()


def test_an_encoder_that_cannot_run_at_the_image_size_is_named_as_such() -> None:
    """At 32 px AlexNet's feature maps vanish: that is the size's fault, not the exporter's."""
    with pytest.raises(ConfigError, match=r"model.encoder='alexnet' .* fails on a 32x32 input") as info:
        check_exportable(ModelConfig(encoder="alexnet", image_size=32), ExportConfig(exporter="dynamo"))
    assert "\n" not in str(info.value)


def test_the_start_up_check_compares_the_exported_graph_with_the_encoder() -> None:
    """An export that runs but computes something else must stop the run before training, not refuse every version."""
    model = ModelConfig(encoder="tests.export.tiny:brightness_branch", hidden_layer=-1, image_size=IMAGE_SIZE)
    with pytest.raises(
        ConfigError, match=r"export.exporter=torchscript.* parity failure: max \|onnx - torch\|"
    ) as info:
        check_exportable(model, ExportConfig(exporter="torchscript"))
    assert "\n" not in str(info.value)
    check_exportable(
        ModelConfig(encoder=f"{F}:tiny_densenet", hidden_layer=-2, image_size=IMAGE_SIZE),
        ExportConfig(exporter="dynamo"),
    )
