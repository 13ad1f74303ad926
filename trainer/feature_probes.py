"""Frozen-encoder evaluation on the learner side: labelled data, kNN and linear-probe top-1 of features.

A number on its own says little: random-init conv nets are a strong kNN baseline, so every
evaluation also scores a randomly initialised encoder of the same architecture (seeded) on the
same preprocessed images. The probes are the usual SSL monitors: a weighted cosine kNN as in
InstDisc / solo-learn (k = 20, votes weighted by exp(cos / 0.07)) and a logistic-regression
probe on standardised features. `probe_regressed` turns two results into an export gate. Scoring
an exported ONNX file (the `eval` command, the probe gate) is export/evaluate.py, built on these.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ContextManager, Optional, Sequence, Union

import cv2
import numpy as np
import torch
from pydantic import ValidationError
from sklearn.datasets import load_digits as sklearn_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from agent.core.config import ModelConfig
from agent.core.errors import ConfigError, ModelFileError, SourceError
from agent.core.frames import fit_frame, to_channels
from agent.core.image_codecs import read_image_bgr
from trainer.backbone import Backbone
from trainer.encoders import build_encoder, check_file_model
from trainer.normalise import normalise, to_unit_nchw

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
KNN_TEMPERATURE = 0.07


@dataclass(frozen=True)
class LabelledImages:
    """RGB uint8 images (N, H, W, 3) with integer labels indexing `classes`.

    `split` is (bank indices, query indices) when the data came with its own train/test halves;
    None means the evaluation draws a stratified split (`EvalConfig.test_fraction`).
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    name: str
    split: Optional[tuple[np.ndarray, np.ndarray]] = None


@dataclass(frozen=True)
class EvalResult:
    """One evaluation; flat so that it is also the `{"event": "eval"}` line of metrics.jsonl."""

    encoder: str
    version: Optional[int]
    step: Optional[int]
    data: str
    k: int
    n_train: int
    n_test: int
    num_classes: int
    feature_dim: int
    knn_top1: float
    linear_top1: float
    random_knn_top1: Optional[float]
    random_linear_top1: Optional[float]
    seed: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def chance(self) -> float:
        return 1.0 / self.num_classes

    def to_event(self) -> dict[str, Any]:
        return {"event": "eval", "time": time.time(), **asdict(self)}

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "EvalResult":
        """Read back a result saved with `to_event` or `--json`; extra keys are ignored."""
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in row.items() if k in known})
        except TypeError as exc:
            raise ModelFileError(f"saved eval result is incomplete: {exc}") from None

    def table(self) -> str:
        """The human-readable verdict: encoder vs random init, both probes."""

        def pct(value: Optional[float]) -> str:
            return f"{value:8.3f}" if value is not None else "     n/a"

        head = f"{self.encoder} (version {self.version}) on {self.data}: {self.n_train} train / {self.n_test} test"
        lines = [
            head,
            f"{'':14s}{'kNN top-1':>10s}{'linear':>10s}   (k={self.k}, chance {self.chance:.3f})",
            f"{'encoder':14s}{pct(self.knn_top1):>10s}{pct(self.linear_top1):>10s}",
            f"{'random init':14s}{pct(self.random_knn_top1):>10s}{pct(self.random_linear_top1):>10s}",
        ]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


# --------------------------------------------------------------------------- datasets


def _hw(image_size: Union[int, tuple[int, int]]) -> tuple[int, int]:
    return (image_size, image_size) if isinstance(image_size, int) else (image_size[0], image_size[1])


def load_digits(image_size: Union[int, tuple[int, int]]) -> LabelledImages:
    """scikit-learn's bundled 8x8 digits (1,797 images), upsampled to RGB at `image_size` (one side or
    (height, width)): labelled data that exists anywhere."""
    digits = sklearn_digits()
    small = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    height, width = _hw(image_size)
    big = np.stack([cv2.resize(im, (width, height), interpolation=cv2.INTER_LINEAR) for im in small])
    rgb = np.repeat(big[..., None], 3, axis=-1)
    return LabelledImages(rgb, digits.target.astype(np.int64), [str(c) for c in range(10)], "digits")


def load_image_folder(
    path: Union[str, Path], image_size: Union[int, tuple[int, int]], max_images: int, seed: int = 0
) -> LabelledImages:
    """One class per subfolder (images found recursively), centre-cropped and resized to `image_size`.

    Above `max_images`, a seeded random subset keeps the class proportions roughly intact.
    """
    root = Path(path)
    if not root.is_dir():
        raise SourceError(f"eval data folder {str(root)!r} does not exist (expected one subfolder per class)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[tuple[Path, int]] = []
    for index, name in enumerate(classes):
        found = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        files.extend((p, index) for p in found)
    if len(classes) < 2 or not files:
        raise SourceError(
            f"eval data folder {str(root)!r} holds {len(files)} images in {len(classes)} class subfolders; "
            "need images in at least 2 (one subfolder per class)"
        )
    if len(files) > max_images:
        keep = np.sort(np.random.default_rng(seed).permutation(len(files))[:max_images])
        files = [files[i] for i in keep]
    images = np.stack([_read_square(p, image_size) for p, _ in files])
    labels = np.array([label for _, label in files], dtype=np.int64)
    return LabelledImages(images, labels, classes, str(root))


def _read_square(path: Path, size: Union[int, tuple[int, int]]) -> np.ndarray:
    """The image centre-cropped to the aspect of `size` (one side or (height, width)) and resized to it, RGB."""
    bgr = read_image_bgr(str(path))
    if bgr is None:
        raise SourceError(f"image {str(path)!r} cannot be decoded; remove it from the eval folder")
    return cv2.cvtColor(fit_frame(bgr, *_hw(size), mode="crop"), cv2.COLOR_BGR2RGB)


def load_train_test_folder(
    path: Union[str, Path], image_size: Union[int, tuple[int, int]], max_images: int, seed: int = 0
) -> LabelledImages:
    """A folder holding `train/` and `test/` image folders (same class names): train is the kNN bank
    and the linear probe's training set, test the queries; each capped at `max_images`."""
    root = Path(path)
    bank = load_image_folder(root / "train", image_size, max_images, seed)
    queries = load_image_folder(root / "test", image_size, max_images, seed)
    if bank.classes != queries.classes:
        raise SourceError(
            f"{str(root)!r}: train/ and test/ name different classes ({len(bank.classes)} vs {len(queries.classes)} "
            "subfolders)"
        )
    index = np.arange(len(bank.labels) + len(queries.labels))
    return LabelledImages(
        np.concatenate([bank.images, queries.images]),
        np.concatenate([bank.labels, queries.labels]),
        bank.classes,
        str(root),
        split=(index[: len(bank.labels)], index[len(bank.labels) :]),
    )


def load_eval_data(
    data: Union[str, Path], image_size: Union[int, tuple[int, int]], max_images: int, seed: int = 0
) -> LabelledImages:
    """`"digits"`, a folder with `train/` and `test/` halves, or one image folder (split at random later)."""
    if str(data) == "digits":
        return load_digits(image_size)
    if (Path(data) / "train").is_dir() and (Path(data) / "test").is_dir():
        return load_train_test_folder(data, image_size, max_images, seed)
    return load_image_folder(data, image_size, max_images, seed)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Train / test indices with the class proportions of `labels` in both halves (seeded, reproducible)."""
    counts = np.bincount(labels)
    present = counts[counts > 0]
    if present.min() < 2:
        single = int(np.flatnonzero(counts == 1)[0])
        raise SourceError(f"class {single} has a single image; every class needs at least 2 to split train/test")
    n_test = max(int(round(len(labels) * test_fraction)), len(present))
    if len(labels) - n_test < len(present):
        raise SourceError(f"{len(labels)} images are too few to split {len(present)} classes into train and test")
    index = np.arange(len(labels))
    train, test = train_test_split(index, test_size=n_test, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(test)


# --------------------------------------------------------------------------- probes


def knn_top1(
    train_feats: np.ndarray,
    train_labels: np.ndarray,
    test_feats: np.ndarray,
    test_labels: np.ndarray,
    k: int = 20,
    temperature: float = KNN_TEMPERATURE,
) -> float:
    """Weighted cosine kNN (InstDisc / solo-learn monitor): each of the k nearest votes exp(cos / T)."""
    train = _l2_normalise(train_feats)
    test = _l2_normalise(test_feats)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    k = min(k, len(train))
    correct = 0
    for start in range(0, len(test), 1024):
        sim = test[start : start + 1024] @ train.T
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        top_sim = np.take_along_axis(sim, top, axis=1)
        weights = np.exp(top_sim / temperature)
        votes = np.zeros((len(sim), num_classes))
        np.add.at(votes, (np.arange(len(sim))[:, None], train_labels[top]), weights)
        correct += int((votes.argmax(1) == test_labels[start : start + 1024]).sum())
    return correct / len(test)


def linear_probe_top1(
    train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray, test_labels: np.ndarray, seed: int = 0
) -> float:
    """Multinomial logistic regression on standardised features (seeded, so a gate sees no probe noise)."""
    scaler = StandardScaler().fit(train_feats)
    probe = LogisticRegression(max_iter=500, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(scaler.transform(train_feats), train_labels)
    return float((probe.predict(scaler.transform(test_feats)) == test_labels).mean())


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@torch.no_grad()
def torch_features(
    module: torch.nn.Module,
    images: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 256,
    guard: Optional[ContextManager[Any]] = None,
) -> np.ndarray:
    """Features of a torch encoder (normalised float NCHW in, (N, D) out) on uint8 RGB images, in eval mode;
    with one mean/std value the encoder is mono and the images are turned gray (`frames.to_channels`).
    `guard` (a lock) is held around each batch's forward pass."""
    device = next(module.parameters()).device
    module.eval()
    images = to_channels(images, len(mean))  # a mono encoder sees gray frames, converted as capture does
    out = []
    for start in range(0, len(images), batch_size):
        batch = to_unit_nchw(torch.from_numpy(images[start : start + batch_size]), device)
        with guard if guard is not None else contextlib.nullcontext():
            out.append(module(normalise(batch, mean, std)).flatten(1).float().cpu().numpy())
    return finite_features(np.concatenate(out), "the torch encoder")


def finite_features(feats: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(feats).all():
        raise ModelFileError(f"{what} produced non-finite features (NaN/inf): the weights are broken")
    return feats


def random_init_encoder(
    model_section: dict[str, Any],
    seed: int,
    operator_model: Optional[ModelConfig] = None,
    source: str = "the manifest",
    channels: int = 3,
) -> torch.nn.Module:
    """The same architecture as an export, initialised as `build_learner` does under `seed`, cut at its hidden layer.

    ConfigError when the manifest names an encoder or hidden layer this installation cannot build;
    ModelFileError when it names an import string that `operator_model` (this machine's config) does not.
    """
    try:
        model_cfg = ModelConfig(**{k: model_section[k] for k in ModelConfig.model_fields if k in model_section})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"manifest model.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    check_file_model(model_cfg, operator_model, source)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_encoder(model_cfg, channels)
    return Backbone(net, model_cfg.hidden_layer).eval()


# --------------------------------------------------------------------------- the whole evaluation


def evaluate_features(
    feats: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray, k: int, seed: int
) -> tuple[float, float]:
    """(kNN top-1, linear top-1) of one feature matrix on one split."""
    knn = knn_top1(feats[train], labels[train], feats[test], labels[test], k=k)
    linear = linear_probe_top1(feats[train], labels[train], feats[test], labels[test], seed=seed)
    return knn, linear


def probe_regressed(new: EvalResult, previous: Optional[EvalResult], tolerance: float = 0.01) -> bool:
    """Export gate: True when the kNN or the linear probe fell more than `tolerance` below the last published.

    Both results must come from the same data, split and k (ConfigError otherwise). The tolerance
    absorbs split-level noise (one test image on digits is ~0.002); the first export (no previous
    result) always passes.
    """
    if previous is None:
        return False
    if (new.data, new.k, new.n_test, new.seed) != (previous.data, previous.k, previous.n_test, previous.seed):
        raise ConfigError(
            f"eval results are not comparable: data {new.data!r} k={new.k} n_test={new.n_test} seed={new.seed} vs "
            f"previous {previous.data!r} k={previous.k} n_test={previous.n_test} seed={previous.seed}"
        )
    return new.knn_top1 < previous.knn_top1 - tolerance or new.linear_top1 < previous.linear_top1 - tolerance
