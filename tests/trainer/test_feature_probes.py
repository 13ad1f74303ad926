"""Probes, datasets, split and gate of trainer.feature_probes on real data and real ONNX files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.core.config import EvalConfig, ExportConfig, ModelConfig
from agent.core.errors import ConfigError, ModelFileError, SourceError
from export.evaluate import OnnxFeatureExtractor, evaluate_export, resolve_encoder
from export.exporter import export_encoder
from export.publish import Publisher
from trainer.feature_probes import (
    EvalResult,
    knn_top1,
    linear_probe_top1,
    load_digits,
    load_image_folder,
    probe_regressed,
    random_init_encoder,
    stratified_split,
    torch_features,
)

TINY = ModelConfig(encoder="tiny_cnn", image_size=16, projection_size=16, projection_hidden_size=32)


def _clusters(n_per_class: int, classes: int, dim: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim)) * 3
    labels = np.repeat(np.arange(classes), n_per_class)
    return centres[labels] + spread * rng.standard_normal((len(labels), dim)), labels


def test_knn_separable_is_perfect_and_shuffled_is_chance() -> None:
    feats, labels = _clusters(100, 5, 32, 0.5, seed=0)
    train, test = stratified_split(labels, 0.3, seed=0)
    assert knn_top1(feats[train], labels[train], feats[test], labels[test], k=20) >= 0.99
    shuffled = np.random.default_rng(1).permutation(labels)
    acc = knn_top1(feats[train], shuffled[train], feats[test], shuffled[test], k=20)
    assert 0.05 < acc < 0.35  # chance is 0.2 (150 test points)


def test_knn_votes_are_weighted_by_similarity() -> None:
    # Two of the three neighbours say class 1 but sit at 60 degrees; the third says 0 and is nearly identical.
    train = np.array([[1.0, 0.02], [0.5, 0.866], [0.5, -0.866], [-1.0, 0.0]])
    labels = np.array([0, 1, 1, 0])
    query = np.array([[1.0, 0.0]])
    assert knn_top1(train, labels, query, np.array([0]), k=3) == 1.0
    assert knn_top1(train, labels, query, np.array([0]), k=3, temperature=100.0) == 0.0  # ~ majority vote


def test_linear_probe_separable_and_shuffled() -> None:
    feats, labels = _clusters(80, 4, 16, 0.5, seed=2)
    train, test = stratified_split(labels, 0.3, seed=0)
    assert linear_probe_top1(feats[train], labels[train], feats[test], labels[test]) >= 0.99
    shuffled = np.random.default_rng(3).permutation(labels)
    assert linear_probe_top1(feats[train], shuffled[train], feats[test], shuffled[test]) < 0.45  # chance 0.25


def test_stratified_split_is_disjoint_balanced_and_reproducible() -> None:
    labels = np.repeat(np.arange(3), [50, 30, 20])
    train, test = stratified_split(labels, 0.2, seed=0)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 100
    assert np.bincount(labels[test]).tolist() == [10, 6, 4]
    assert np.array_equal(test, stratified_split(labels, 0.2, seed=0)[1])
    with pytest.raises(SourceError, match="class 2 has a single image"):
        stratified_split(np.array([0, 0, 1, 1, 2]), 0.3)


def test_digits_are_upsampled_rgb() -> None:
    data = load_digits(24)
    assert data.images.shape == (1797, 24, 24, 3) and data.images.dtype == np.uint8
    assert sorted(set(data.labels.tolist())) == list(range(10))
    assert data.images.max() == 255 and np.array_equal(data.images[..., 0], data.images[..., 2])


def test_image_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for cls, colour in (("cat", (0, 0, 230)), ("dog", (0, 230, 0))):
        for i in range(6):
            sub = tmp_path / cls / ("nested" if i % 2 else "")
            sub.mkdir(parents=True, exist_ok=True)
            img = np.full((30 + i, 40, 3), colour, np.uint8) + rng.integers(0, 20, (30 + i, 40, 3), dtype=np.uint8)
            cv2.imwrite(str(sub / f"{i}.png"), img)
    data = load_image_folder(tmp_path, 12, max_images=100)
    assert data.images.shape == (12, 12, 12, 3) and data.classes == ["cat", "dog"]
    assert np.bincount(data.labels).tolist() == [6, 6]
    assert data.images[data.labels == 0][..., 0].mean() > 200  # BGR red on disk → R channel in RGB
    assert len(load_image_folder(tmp_path, 12, max_images=5).labels) == 5

    with pytest.raises(SourceError, match="does not exist"):
        load_image_folder(tmp_path / "missing", 12, 100)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(SourceError, match="0 images"):
        load_image_folder(tmp_path / "empty", 12, 100)
    (tmp_path / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(SourceError, match="broken.jpg"):
        load_image_folder(tmp_path, 12, 100)


def _result(knn: float, linear: float) -> EvalResult:
    return EvalResult("x.onnx", 1, 10, "digits", 20, 100, 50, 10, 8, knn, linear, None, None, 0, 0.1)


def test_probe_gate() -> None:
    assert not probe_regressed(_result(0.5, 0.6), None)
    assert not probe_regressed(_result(0.795, 0.80), _result(0.80, 0.80))  # within tolerance
    assert probe_regressed(_result(0.70, 0.80), _result(0.80, 0.80))
    assert probe_regressed(_result(0.80, 0.70), _result(0.80, 0.80))
    assert EvalResult.from_dict(_result(0.7, 0.8).to_event()) == _result(0.7, 0.8)
    other_k = EvalResult("x.onnx", 1, 10, "digits", 5, 100, 50, 10, 8, 0.9, 0.9, None, None, 0, 0.1)
    with pytest.raises(ConfigError, match="not comparable"):
        probe_regressed(other_k, _result(0.8, 0.8))


def publish_random_init(
    export_dir: Path, seed: int, input_format: str = "uint8_nhwc", manifest_model: ModelConfig = TINY
) -> int:
    """A real export of a seeded random-init tiny encoder through the project's exporter."""
    frames = load_digits(TINY.image_size).images[:8]
    return export_encoder(
        0,
        random_init_encoder(TINY.model_dump(), seed),
        frames,
        export_cfg=ExportConfig(input_format=input_format, collapse_std_min=0.0),
        model_cfg=manifest_model,
        publisher=Publisher(export_dir, keep=5),
    )


@pytest.mark.parametrize("input_format", ["uint8_nhwc", "float_nchw"])
def test_export_of_the_reference_scores_like_the_reference(tmp_path: Path, input_format: str) -> None:
    """Exported with the reference's own seed, the ONNX encoder must match the torch reference on digits."""
    publish_random_init(tmp_path, seed=0, input_format=input_format)
    encoder = resolve_encoder(tmp_path)
    images = load_digits(TINY.image_size).images[::60]
    onnx_feats = OnnxFeatureExtractor(encoder)(images)
    spec = encoder.manifest.input
    torch_feats = torch_features(random_init_encoder(TINY.model_dump(), 0), images, spec.mean, spec.std)
    np.testing.assert_allclose(onnx_feats, torch_feats, atol=1e-4, rtol=1e-4)
    other = torch_features(random_init_encoder(TINY.model_dump(), 1), images, spec.mean, spec.std)
    assert np.abs(other - onnx_feats).max() > 0.01  # the seed really decides the reference

    result = evaluate_export(tmp_path, "digits", EvalConfig(), seed=0)
    assert result.version == 1 and result.num_classes == 10 and result.n_test == 539 and result.feature_dim == 64
    assert result.knn_top1 > 0.5  # far above chance (0.1): digits are easy even for random conv features
    assert result.knn_top1 == pytest.approx(result.random_knn_top1, abs=0.004)
    assert result.linear_top1 == pytest.approx(result.random_linear_top1, abs=0.01)


def test_bare_onnx_without_manifest_is_evaluated_without_reference(tmp_path: Path) -> None:
    version = publish_random_init(tmp_path / "exports", seed=2)
    bare = tmp_path / "bare.onnx"
    bare.write_bytes((tmp_path / "exports" / f"encoder-{version:06d}.onnx").read_bytes())
    result = evaluate_export(bare, "digits", EvalConfig(k=5))
    assert result.version is None and result.random_knn_top1 is None and result.k == 5
    assert result.knn_top1 > 0.5 and "no random-init reference" in result.notes[0]

    unknown = TINY.model_copy(update={"encoder": "no_such_net"})
    publish_random_init(tmp_path / "other", seed=2, manifest_model=unknown)
    result = evaluate_export(tmp_path / "other", "digits", EvalConfig(k=5))
    assert result.random_knn_top1 is None and "unknown encoder 'no_such_net'" in result.notes[0]


def test_bad_encoders_are_one_line_model_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="nothing published"):
        resolve_encoder(tmp_path)
    with pytest.raises(ModelFileError, match="does not exist"):
        resolve_encoder(tmp_path / "nope.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(ModelFileError, match="cannot load") as info:
        evaluate_export(corrupt, "digits", EvalConfig())
    assert "\n" not in str(info.value)
    version = publish_random_init(tmp_path / "exports", seed=1)
    model = tmp_path / "exports" / f"encoder-{version:06d}.onnx"
    model.write_bytes(model.read_bytes()[:-100])
    with pytest.raises(ModelFileError, match="sha256"):
        resolve_encoder(tmp_path / "exports")


def test_eval_data_loads_at_a_non_square_size(tmp_path) -> None:
    import cv2

    from trainer.feature_probes import load_digits, load_image_folder

    assert load_digits((12, 20)).images.shape[1:] == (12, 20, 3)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        cv2.imwrite(str(tmp_path / name / "x.png"), np.full((30, 40, 3), 90 if name == "a" else 200, np.uint8))
    assert load_image_folder(tmp_path, (12, 20), max_images=10).images.shape == (2, 12, 20, 3)
    assert load_image_folder(tmp_path, 16, max_images=10).images.shape == (2, 16, 16, 3)
