"""Compatibility maps, the drift gate, pins and retention: real exports, real ONNX files, real onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from agent.core.config import ExportConfig
from agent.core.errors import ExportRefused, ModelFileError
from agent.core.frames import resize_frames
from agent.robot.runtime import HotEncoder
from export.calibration import CALIBRATION_NAME
from export.drift_gate import drift_record
from export.embedding_maps import fit_compat, fit_procrustes, fit_ridge, linear_cka
from export.exporter import BackgroundExporter, export_encoder
from export.map_files import map_filename
from export.onnx_export import input_spec
from export.pins import read_pins, write_pin
from export.publish import Publisher
from export.verify import torch_reference
from tests.export.tiny import IMAGE_SIZE, model_cfg, scene_frames, tiny_encoder
from trainer.metrics import format_status
from trainer.normalise import IMAGENET_MEAN, IMAGENET_STD

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
CALIBRATION = scene_frames(128, seed=3)  # 32 held out: enough for the drift gate to judge (MIN_GATE_HOLDOUT)


def random_rotation(dim: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))


def transformed(base: nn.Module, seed: int, scale: float, width: int = 16) -> nn.Module:
    """`base` followed by z → scale·z·Q + b (Q orthogonal): an exact linear relative of `base`."""
    linear = nn.Linear(width, width)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(scale * random_rotation(width, seed).T).float())
        linear.bias.copy_(torch.from_numpy(np.random.default_rng(seed + 1).normal(size=width)).float())
    return nn.Sequential(base, nn.Flatten(), linear).eval()


def publish(
    export_dir: Path, encoder: nn.Module, frames: np.ndarray = CALIBRATION, keep: int = 50, **cfg: object
) -> int:
    return export_encoder(
        0,
        encoder,
        frames,
        export_cfg=ExportConfig(keep=keep, **cfg),
        model_cfg=model_cfg(),
        publisher=Publisher(export_dir, keep),
    )


def reference(encoder: nn.Module, frames: np.ndarray) -> np.ndarray:
    """What `encoder` answers in torch for frames prepared as serving prepares them."""
    spec = input_spec("uint8_nhwc", IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD)
    return torch_reference(encoder, resize_frames(frames, IMAGE_SIZE, IMAGE_SIZE), spec)


def manifest(export_dir: Path, version: int) -> dict:
    return json.loads((export_dir / f"encoder-{version:06d}.json").read_text())


@pytest.mark.parametrize("method", ["procrustes", "ridge"])
def test_map_recovers_a_known_rotation_scale_and_shift(method: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 24))
    q, scale, shift = random_rotation(24, 1), 2.5, rng.normal(size=24)
    y = scale * x @ q + shift
    fit = fit_procrustes(x, y) if method == "procrustes" else fit_ridge(x, y, ridge=1e-9)
    np.testing.assert_allclose(fit.matrix, scale * q, atol=1e-4)
    np.testing.assert_allclose(fit.bias, shift, atol=1e-4)
    result = fit_compat(x, y, method, ridge=1e-9)
    assert result.r2 > 0.999999 and abs(result.cka - 1) < 1e-9
    assert (result.fit_frames, result.holdout_frames) == (150, 50)


def test_linear_cka_follows_its_definition() -> None:
    """Kornblith et al. 2019: ||YᵀX||²_F / (||XᵀX||_F ||YᵀY||_F) on centred X, Y."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(100, 8)), rng.normal(size=(100, 5))
    xc, yc = x - x.mean(0), y - y.mean(0)
    expected = np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    assert linear_cka(x, y) == pytest.approx(expected, rel=1e-12)
    assert linear_cka(x, 3 * x @ random_rotation(8, 2) + 1) == pytest.approx(1.0)
    assert linear_cka(x, y) < 0.2


def test_maps_compose_over_three_versions_into_the_pinned_space(tmp_path: Path) -> None:
    base = tiny_encoder(1)
    v2 = transformed(base, seed=10, scale=1.7)
    v3 = transformed(v2, seed=20, scale=0.6)
    for encoder in (base, v2, v3):
        publish(tmp_path, encoder, compat_map="procrustes")
    assert (tmp_path / CALIBRATION_NAME).exists()
    m2, m3 = manifest(tmp_path, 2)["compat"], manifest(tmp_path, 3)["compat"]
    assert manifest(tmp_path, 1)["compat"]["maps_to"] is None
    assert (m2["maps_to"], m3["maps_to"]) == (1, 2) and m3["map_file"] == map_filename(3)
    assert m3["direct"] == []  # nothing pinned: no direct maps
    assert m2["r2"] > 0.9999 and m3["cka"] > 0.9999
    frames = scene_frames(6, seed=11)
    z1, z3 = reference(base, frames), reference(v3, frames)
    with HotEncoder(tmp_path, providers="cpu", wait=False, compatible_with=1) as pinned:
        mapped, version = pinned.embed_with_version(frames)
        assert version == 3 and pinned.compatible_with == 1
        np.testing.assert_allclose(mapped, z1, atol=1e-3 * np.abs(z1).max())  # v3 → v2 → v1, composed
        assert np.abs(z3 - z1).max() > 0.1  # raw version 3 answers in another space
        pinned.repin(3)  # the head was refit on version 3: raw version 3 embeddings from now on
        np.testing.assert_allclose(pinned.embed(frames), z3, atol=1e-5)
        assert read_pins(tmp_path) == {1, 3}  # version 1's pin stays: another runtime may still serve its space


def test_a_pinned_runtime_uses_a_direct_map_where_the_chain_would_compound(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = tiny_encoder(1)
    publish(tmp_path, base)
    write_pin(tmp_path, 1)  # a runtime serves version 1's space from here on
    publish(tmp_path, tiny_encoder(2), min_compatibility=None)  # an unrelated space: the hop 2 → 1 is poor
    publish(
        tmp_path, transformed(base, seed=4, scale=1.5), min_compatibility=None, compat_map="procrustes"
    )  # v1's exact relative
    direct = manifest(tmp_path, 3)["compat"]["direct"]
    assert [(d["maps_to"], d["map_file"]) for d in direct] == [(1, map_filename(3, 1))]
    assert direct[0]["r2"] > 0.9999 and manifest(tmp_path, 3)["compat"]["maps_to"] == 2
    frames = scene_frames(6, seed=11)
    z1 = reference(base, frames)
    with HotEncoder(tmp_path, providers="cpu", wait=False, compatible_with=1) as pinned:
        np.testing.assert_allclose(pinned.embed(frames), z1, atol=1e-3 * np.abs(z1).max())
    (tmp_path / map_filename(3, 1)).write_bytes(b"damaged")  # the direct map fails its hash: the chain serves
    with HotEncoder(tmp_path, providers="cpu", wait=False, compatible_with=1) as pinned:
        chained, version = pinned.embed_with_version(frames)
    assert version == 3 and np.abs(chained - z1).max() > 1e-2 * np.abs(z1).max()  # through unrelated version 2
    assert "composing version 3's chain of maps instead" in caplog.text


def test_the_drift_gate_refuses_a_version_too_far_from_a_pinned_one(tmp_path: Path) -> None:
    publish(tmp_path, tiny_encoder(1))
    write_pin(tmp_path, 1)
    unrelated = tiny_encoder(2)
    publish(tmp_path, unrelated, min_compatibility=None)
    with pytest.raises(ExportRefused, match=r"pinned version 1 .*R² = .*delete pins/encoder-000001.pin"):
        publish(tmp_path, transformed(unrelated, seed=3, scale=1.2), min_compatibility=0.99)  # near 2, far from 1
    (tmp_path / "pins" / "encoder-000001.pin").unlink()
    assert publish(tmp_path, transformed(unrelated, seed=3, scale=1.2), min_compatibility=0.99) == 3


def test_each_export_event_carries_its_drift_for_the_status_line_and_report(tmp_path: Path) -> None:
    base = tiny_encoder(1)
    exporter = BackgroundExporter(ExportConfig(compat_map="procrustes"), model_cfg(), tmp_path)
    exporter.submit(10, base, CALIBRATION)
    exporter.close(timeout_s=60)
    write_pin(tmp_path, 1)
    events = exporter.poll()
    for step, seed, unrelated in ((20, 4, False), (30, 5, True)):
        exporter = BackgroundExporter(
            ExportConfig(compat_map="procrustes", min_compatibility=None), model_cfg(), tmp_path
        )
        exporter.submit(step, tiny_encoder(seed) if unrelated else transformed(base, seed=seed, scale=1.3), CALIBRATION)
        exporter.close(timeout_s=60)
        events += exporter.poll()
    first, second, third = events
    assert first == {"event": "export", "step": 10, "version": 1}  # nothing to compare version 1 with
    assert second["cka_prev"] > 0.9999 and second["cka_pinned"] == {"1": second["cka_prev"]} and second["r2"] > 0.9999
    assert third["cka_prev"] < 0.99 and set(third["cka_pinned"]) == {"1"}  # its direct map into version 1's space
    line = format_status(
        {"step": 30, "last_export_version": 3, "cka_prev": third["cka_prev"], "cka_pinned": third["cka_pinned"]}
    )
    assert f"v3 CKA {third['cka_prev']:.3f} prev, {third['cka_pinned']['1']:.3f} v1" in line


def test_the_drift_gate_waits_for_enough_held_out_frames(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    few = CALIBRATION[:64]  # 16 held out: an R² there says little
    publish(tmp_path, tiny_encoder(1), frames=few)
    assert publish(tmp_path, tiny_encoder(2), frames=few, min_compatibility=0.99) == 2  # recorded, not refused
    assert manifest(tmp_path, 2)["compat"]["holdout_frames"] == 16
    assert "the drift gate waits for 32" in caplog.text


def test_a_runtime_cannot_pin_a_version_retention_removed(tmp_path: Path) -> None:
    for seed in (1, 2, 3):
        publish(tmp_path, tiny_encoder(seed), keep=1, min_compatibility=None)
    with pytest.raises(ModelFileError, match=r"cannot pin version 1: it is not in .*versions there: 3"):
        HotEncoder(tmp_path, providers="cpu", wait=False, compatible_with=1)
    assert read_pins(tmp_path) == set()


def test_the_drift_gate_refuses_a_version_that_cannot_be_mapped_back(tmp_path: Path) -> None:
    publish(tmp_path, tiny_encoder(1))
    with pytest.raises(ExportRefused, match="drift gate.*R² = .*export.min_compatibility 0.99"):
        publish(tmp_path, tiny_encoder(2), min_compatibility=0.99)  # another random network: unrelated space
    assert sorted(p.name for p in tmp_path.glob("encoder-*")) == ["encoder-000001.json", "encoder-000001.onnx"]
    assert publish(tmp_path, transformed(tiny_encoder(1), seed=5, scale=2.0), min_compatibility=0.99) == 2


def test_the_calibration_set_starts_from_enough_frames_grows_to_its_size_then_stays(tmp_path: Path) -> None:
    publish(tmp_path, tiny_encoder(1), frames=scene_frames(12), calibration_frames=160)  # too few to calibrate on
    assert not (tmp_path / CALIBRATION_NAME).exists()
    assert "no calibration set" in manifest(tmp_path, 1)["compat"]["reason"]
    publish(
        tmp_path, tiny_encoder(1), frames=CALIBRATION, calibration_frames=160
    )  # drawn now; version 2 is mapped at once
    assert manifest(tmp_path, 2)["compat"]["maps_to"] == 1
    first = np.load(tmp_path / CALIBRATION_NAME)
    np.testing.assert_array_equal(first, CALIBRATION)  # all 128, below the size of 160
    later = scene_frames(64, seed=7)
    publish(tmp_path, tiny_encoder(1), frames=np.concatenate([CALIBRATION[:8], later]), calibration_frames=160)
    grown = np.load(tmp_path / CALIBRATION_NAME)
    assert grown.shape == (160, *CALIBRATION.shape[1:]) and grown.dtype == np.uint8
    np.testing.assert_array_equal(grown[:128], first)  # kept, and 32 new frames added (none it already held)
    assert {f.tobytes() for f in grown[128:]} <= {f.tobytes() for f in later}
    assert manifest(tmp_path, 3)["compat"]["maps_to"] == 2
    publish(tmp_path, tiny_encoder(1), frames=scene_frames(64, seed=9), calibration_frames=160)
    np.testing.assert_array_equal(np.load(tmp_path / CALIBRATION_NAME), grown)  # full: fixed from then on


def test_a_pinned_version_and_the_maps_down_to_it_survive_retention(tmp_path: Path) -> None:
    base = tiny_encoder(1)
    encoder = base
    publish(tmp_path, base, keep=10)
    for seed in range(2, 7):  # published before anything was pinned: maps to the previous version only
        encoder = transformed(encoder, seed=seed, scale=1.1)
        publish(tmp_path, encoder, keep=10, compat_map="procrustes")
    write_pin(tmp_path, 1)  # what HotEncoder(compatible_with=1) records
    encoder = transformed(encoder, seed=7, scale=1.1)
    publish(tmp_path, encoder, keep=2, compat_map="procrustes")  # version 7: also a direct map into version 1
    names = sorted(p.name for p in tmp_path.glob("encoder-*"))
    assert {"encoder-000001.onnx", "encoder-000006.onnx", "encoder-000007.onnx", map_filename(7, 1)} <= set(names)
    for version in (2, 3, 4, 5):  # on version 6's chain down to the pin: manifest and map stay, the model goes
        assert f"encoder-{version:06d}.json" in names and map_filename(version) in names
        assert f"encoder-{version:06d}.onnx" not in names
    frames = scene_frames(4, seed=2)
    z1 = reference(base, frames)
    with HotEncoder(tmp_path, providers="cpu", wait=False, compatible_with=1) as pinned:
        assert pinned.version == 7  # through its direct map
        np.testing.assert_allclose(pinned.embed(frames), z1, atol=1e-3 * np.abs(z1).max())
    publish(tmp_path, transformed(encoder, seed=8, scale=1.0), keep=2, compat_map="procrustes")
    names = sorted(p.name for p in tmp_path.glob("encoder-*.json"))
    assert names == ["encoder-000001.json", "encoder-000007.json", "encoder-000008.json"]  # 7 and 8 map straight to 1
    (tmp_path / "pins" / "encoder-000001.pin").unlink()  # unpinned: the next publish prunes as usual
    publish(tmp_path, transformed(encoder, seed=9, scale=1.0), keep=2)
    assert sorted(p.name for p in tmp_path.glob("encoder-*.json")) == ["encoder-000008.json", "encoder-000009.json"]


def test_drift_of_a_version_with_a_malformed_compat_section_is_left_out_not_raised(tmp_path: Path) -> None:
    publish(tmp_path, tiny_encoder(1))
    publish(tmp_path, transformed(tiny_encoder(1), seed=5, scale=2.0))
    path = tmp_path / "encoder-000002.json"
    tree = json.loads(path.read_text())
    assert set(drift_record(tmp_path, 2)) == {"r2", "cka_prev", "cka_pinned"}
    for junk in (None, 5, "x", [None, {"maps_to": "1"}]):
        tree["compat"]["direct"] = junk
        path.write_text(json.dumps(tree))
        assert drift_record(tmp_path, 2)["cka_pinned"] == {}, junk
    tree["compat"]["maps_to"] = [1]
    path.write_text(json.dumps(tree))
    assert drift_record(tmp_path, 2) == {}
