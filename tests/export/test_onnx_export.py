"""Export + verification gate: parity on real frames, dynamic batch, both input formats, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from agent.core.config import ExportConfig
from agent.core.errors import ExportRefused
from agent.core.frames import resize_frames
from export.exporter import export_encoder
from export.manifest import read_latest, read_manifest, sha256_file
from export.onnx_export import input_spec
from export.publish import Publisher
from export.verify import collapse_std, torch_reference
from tests.export.tiny import IMAGE_SIZE, model_cfg, publish_version, scene_frames, tiny_encoder
from trainer.normalise import IMAGENET_MEAN, IMAGENET_STD

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),  # the parity case provokes one on purpose
]


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _reference(encoder: nn.Module, frames: np.ndarray) -> np.ndarray:
    spec = input_spec("uint8_nhwc", IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD)
    return torch_reference(encoder, resize_frames(frames, IMAGE_SIZE, IMAGE_SIZE), spec)


def test_uint8_export_matches_torch_at_any_batch_size(tmp_path: Path) -> None:
    version = publish_version(tmp_path, seed=1, step=42)
    manifest = read_manifest(tmp_path / "encoder-000001.json")
    assert version == 1 and manifest.step == 42 and manifest.output_dim == 16
    session = _session(tmp_path / manifest.model_file)
    graph_in = session.get_inputs()[0]
    assert (graph_in.name, graph_in.type) == ("frames", "tensor(uint8)")
    assert graph_in.shape[1:] == [IMAGE_SIZE, IMAGE_SIZE, 3] and not isinstance(graph_in.shape[0], int)
    frames = scene_frames(9, seed=3)
    expected = _reference(tiny_encoder(1), frames)
    for batch in (1, 2, 7, 9):  # 2 is the export example; the others prove the batch axis is dynamic
        got = session.run(None, {"frames": resize_frames(frames[:batch], IMAGE_SIZE, IMAGE_SIZE)})[0]
        np.testing.assert_allclose(got, expected[:batch], atol=1e-4)
    assert np.abs(expected[0] - expected[1]).max() > 1e-3  # the frames really differ


def test_manifest_records_everything_a_consumer_needs(tmp_path: Path) -> None:
    publish_version(tmp_path, seed=1, step=7)
    tree = json.loads((tmp_path / "encoder-000001.json").read_text())
    assert tree["sha256"] == sha256_file(tmp_path / "encoder-000001.onnx")
    assert tree["input"]["dtype"] == "uint8" and tree["input"]["layout"] == "NHWC"
    assert tree["input"]["channel_order"] == "RGB" and tree["input"]["normalisation"]["in_graph"] is True
    assert tree["input"]["normalisation"]["mean"] == pytest.approx(list(IMAGENET_MEAN))
    assert tree["output"] == {"name": "embedding", "dtype": "float32", "dim": 16}
    assert tree["model"] == {
        "encoder": "tiny",
        "encoder_kwargs": {},
        "stem": "standard",
        "hidden_layer": "avgpool",
        "image_size": IMAGE_SIZE,
    }
    assert 0 <= tree["verification"]["parity_max_abs"] <= 1e-3
    assert tree["verification"]["collapse_std"] > 1e-3
    assert tree["opset"] == 17 and tree["exporter"] == "torchscript"
    assert set(tree["versions"]) == {"torch", "onnx", "onnxruntime"}
    assert tree["step"] == 7 and tree["weights"] == "target" and tree["created_utc"]


def test_float_nchw_input_option(tmp_path: Path) -> None:
    publish_version(tmp_path, seed=2, input_format="float_nchw")
    manifest = read_manifest(tmp_path / "encoder-000001.json")
    assert (manifest.input.dtype, manifest.input.layout, manifest.input.name) == ("float32", "NCHW", "images")
    frames = scene_frames(6, seed=4)
    x = manifest.input.prepare(frames)
    assert x.shape == (6, 3, IMAGE_SIZE, IMAGE_SIZE) and x.dtype == np.float32
    got = _session(tmp_path / manifest.model_file).run(None, {"images": x})[0]
    np.testing.assert_allclose(got, _reference(tiny_encoder(2), frames), atol=1e-4)


@pytest.mark.slow
def test_dynamo_exporter_passes_the_same_gate(tmp_path: Path) -> None:
    publish_version(tmp_path, seed=3, exporter="dynamo")
    manifest = read_manifest(tmp_path / "encoder-000001.json")
    assert manifest.raw["exporter"] == "dynamo" and manifest.raw["opset"] >= 18
    frames = scene_frames(3, seed=5)
    got = _session(tmp_path / manifest.model_file).run(None, {"frames": manifest.input.prepare(frames)})[0]
    np.testing.assert_allclose(got, _reference(tiny_encoder(3), frames), atol=1e-4)


class _BrightnessBranch(nn.Module):
    """Python control flow on the data: the tracer bakes in the branch the export example took."""

    def __init__(self) -> None:
        super().__init__()
        self.bright, self.dark = tiny_encoder(4), tiny_encoder(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bright(x) if float(x.mean()) > -0.5 else self.dark(x)


class _Constant(nn.Module):
    """A collapsed encoder: every frame maps to the same point."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_encoder(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * 0.0 + 1.0


@pytest.mark.parametrize(
    "encoder, frames, needle",
    [
        # Export example is uniform noise (mean ≈ 0 after normalisation); dark frames take the other branch.
        (_BrightnessBranch(), (scene_frames(8) // 8), "parity failure"),
        (_Constant(), scene_frames(8), "collapsed encoder"),
        (tiny_encoder(7), scene_frames(1), "at least 2 real frames"),
    ],
    ids=["parity", "collapse", "too-few-frames"],
)
def test_failed_gate_publishes_nothing_and_keeps_last_good(
    tmp_path: Path, encoder: nn.Module, frames: np.ndarray, needle: str
) -> None:
    publish_version(tmp_path, seed=1)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ExportRefused, match=needle):
        export_encoder(
            5, encoder, frames, export_cfg=ExportConfig(), model_cfg=model_cfg(), publisher=Publisher(tmp_path, 5)
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temp files left either
    assert read_latest(tmp_path) == "encoder-000001.json"


def test_an_unexportable_encoder_is_refused_with_the_exporters_reason(tmp_path: Path) -> None:
    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("layer 3 exploded")

    with pytest.raises(ExportRefused, match="layer 3 exploded"):
        export_encoder(
            1,
            Boom(),
            scene_frames(4),
            export_cfg=ExportConfig(),
            model_cfg=model_cfg(),
            publisher=Publisher(tmp_path, 5),
        )
    assert list(tmp_path.iterdir()) == []


def test_a_dynamo_refusal_names_its_cause_not_the_exporters_banner(tmp_path: Path) -> None:
    class DataBranch(nn.Module):  # runs eagerly; torch.export cannot guard on the data
        def __init__(self) -> None:
            super().__init__()
            self.net = tiny_encoder(8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x) if x.sum() > 0 else -self.net(x)

    with pytest.raises(ExportRefused) as info:
        export_encoder(
            1,
            DataBranch(),
            scene_frames(4),
            export_cfg=ExportConfig(exporter="dynamo"),
            model_cfg=model_cfg(),
            publisher=Publisher(tmp_path, 5),
        )
    message = str(info.value)
    assert "data-dependent" in message and "step 1/3" not in message and "\x1b" not in message, message
    assert "\n" not in message and list(tmp_path.iterdir()) == []


def test_collapse_metric_separates_collapsed_from_spread_embeddings() -> None:
    rng = np.random.default_rng(0)
    spread = rng.standard_normal((64, 128))
    assert collapse_std(spread) == pytest.approx(1 / np.sqrt(128), rel=0.15)
    collapsed = np.ones((64, 128)) + 1e-6 * rng.standard_normal((64, 128))
    assert collapse_std(collapsed) < 1e-5
    assert collapse_std(np.zeros((8, 16))) == 0.0  # dead features: all-zero rows do not divide by zero


def _mono_encoder(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1), nn.AdaptiveAvgPool2d(1)
    )
    return net.eval()


@pytest.mark.parametrize("stored_channels", [3, 1])
def test_a_mono_non_square_encoder_exports_uint8_nhwc_with_one_channel(tmp_path: Path, stored_channels: int) -> None:
    import cv2

    from agent.core.config import ModelConfig
    from trainer.normalise import MONO_MEAN, MONO_STD

    rgb = scene_frames(12)
    gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in rgb])[..., None]  # written out independently
    frames = rgb if stored_channels == 3 else gray  # buffer frames from an RGB capture, or a mono one
    encoder = _mono_encoder(0)
    version = export_encoder(
        0,
        encoder,
        frames,
        export_cfg=ExportConfig(),
        model_cfg=ModelConfig(encoder="tiny", image_size=(24, 32)),
        publisher=Publisher(tmp_path, 5),
        mean=MONO_MEAN,
        std=MONO_STD,
    )
    manifest = read_manifest(tmp_path / f"encoder-{version:06d}.json")
    spec = manifest.input
    assert (spec.height, spec.width, spec.channels, spec.channel_order) == (24, 32, 1, "GRAY")
    assert manifest.raw["input"]["channels"] == 1 and manifest.raw["model"]["image_size"] == [24, 32]
    session = _session(tmp_path / manifest.model_file)
    graph_in = session.get_inputs()[0]
    assert graph_in.type == "tensor(uint8)" and graph_in.shape[1:] == [24, 32, 1]
    # Serving: robot frames (RGB, any size) prepared by the manifest's spec, as the runtime does.
    got = session.run(None, {spec.name: spec.prepare(rgb[:5])})[0]
    resized = [cv2.resize(f, (32, 24), interpolation=cv2.INTER_AREA) for f in rgb[:5]]  # no stored size: a plain resize
    small = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in resized])
    x = torch.from_numpy(small).float()[:, None] / 255.0
    with torch.no_grad():
        expected = encoder((x - MONO_MEAN[0]) / MONO_STD[0]).flatten(1).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


def _file_opset(path: Path) -> int:
    import onnx

    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))


@pytest.mark.slow
def test_the_published_file_has_the_configured_opset(tmp_path: Path) -> None:
    publish_version(tmp_path / "ts", seed=1, opset=16)
    assert _file_opset(tmp_path / "ts" / "encoder-000001.onnx") == 16
    publish_version(tmp_path / "dyn", seed=1, exporter="dynamo")  # no opset given: the exporter's own, 18
    manifest = read_manifest(tmp_path / "dyn" / "encoder-000001.json")
    assert _file_opset(tmp_path / "dyn" / manifest.model_file) == manifest.raw["opset"] == 18


def test_an_opset_the_dynamo_exporter_cannot_write_is_refused_at_start_up() -> None:
    from agent.core.config import load_config
    from agent.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"export.opset=17 .*export.exporter=dynamo") as info:
        load_config(None, values={"export.exporter": "dynamo", "export.opset": 17})
    assert "\n" not in str(info.value)
    assert load_config(None, values={"export.exporter": "dynamo"}).export.opset is None


def test_repeated_frames_are_never_called_a_collapse(tmp_path: Path) -> None:
    """A buffer of a few frames is sampled with replacement (a resumed replay right after start): five copies of one
    frame once refused a healthy encoder as "collapsed ... std 0.0000 over 5 frames"."""
    one = np.repeat(scene_frames(1), 8, axis=0)
    with pytest.raises(ExportRefused, match="at least 2 distinct frames, got 1 distinct of 8"):
        export_encoder(
            5, tiny_encoder(7), one, export_cfg=ExportConfig(), model_cfg=model_cfg(), publisher=Publisher(tmp_path, 5)
        )
    two = np.concatenate([np.repeat(scene_frames(2)[:1], 7, axis=0), scene_frames(2)[1:]])  # 7 copies + 1 other
    version = export_encoder(
        5, tiny_encoder(7), two, export_cfg=ExportConfig(), model_cfg=model_cfg(), publisher=Publisher(tmp_path, 5)
    )
    assert (
        read_manifest(tmp_path / f"encoder-{version:06d}.json").raw["verification"]["collapse_std"]
        > ExportConfig().collapse_std_min
    )
