"""Scoring an exported ONNX encoder: kNN and linear probe next to a random-init twin of its architecture.

What `byol-agent eval` and the export probe gate run. The encoder is fed exactly as the runtime
feeds it (`InputSpec.prepare` from its manifest); the probes and the data loaders are the learner
side's (trainer/feature_probes.py), so the online monitor and this score the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import onnxruntime as ort
import torch

from agent.core.config import EvalConfig, ModelConfig
from agent.core.errors import ConfigError, ModelFileError
from agent.core.frames import resize_frames
from export.manifest import CHANNEL_ORDERS, LATEST_NAME, InputSpec, Manifest, read_latest, read_manifest, sha256_file
from export.sessions import create_session, resolve_providers, without_tensorrt
from trainer.byol import view_statistics
from trainer.feature_probes import (
    EvalResult,
    LabelledImages,
    evaluate_features,
    finite_features,
    load_eval_data,
    random_init_encoder,
    stratified_split,
    torch_features,
)

# The step count after which an encoder trained with the shipped default config (configs/default.yaml) scores
# clearly above its random-init twin on real photos: measured with `byol-agent run --source` on the cifar dev set's
# train/ photos, scored by `eval` (train/ bank, test/ queries): kNN +0.008 / +0.014 / +0.020 at 25 / 50 / 100 steps
# (within a 2,000-query score's noise), +0.042 with linear +0.022 at 200, +0.04 to +0.06 up to 541 (one seed,
# 2026-12-05; benchmarks/RESULTS.md, "When does the default config pass its random init?").
DEFAULT_PASSES_RANDOM_INIT_STEPS = 200


def young_encoder_note(step: Optional[int]) -> Optional[str]:
    """A note for an encoder younger (in training steps) than the measured point above; None otherwise."""
    if step is None or step >= DEFAULT_PASSES_RANDOM_INIT_STEPS:
        return None
    return (
        f"at the default config the probe usually passes random init after ~{DEFAULT_PASSES_RANDOM_INIT_STEPS} "
        f"steps on real photos (benchmarks/RESULTS.md); this encoder has {step}"
    )


@dataclass(frozen=True)
class EncoderFile:
    """A resolved ONNX encoder and its manifest (None for a bare .onnx without one beside it)."""

    onnx_path: Path
    manifest: Optional[Manifest]


def resolve_encoder(path: Union[str, Path]) -> EncoderFile:
    """An export directory (what LATEST names), a manifest .json, or an .onnx file (with its manifest if beside it).

    A manifest's sha256 is checked, so a truncated or replaced model file is named as such.
    """
    path = Path(path)
    if path.is_dir():
        name = read_latest(path)
        if name is None:
            raise ModelFileError(f"export directory {str(path)!r} has nothing published yet (no {LATEST_NAME})")
        path = path / name
    if path.suffix == ".json":
        read = read_manifest(path)
        manifest: Optional[Manifest] = read
        onnx_path = path.parent / read.model_file
    else:
        onnx_path = path
        sibling = path.with_suffix(".json")
        manifest = read_manifest(sibling) if sibling.is_file() else None
    if not onnx_path.is_file():
        raise ModelFileError(f"encoder {str(onnx_path)!r} does not exist (give an export directory or a .onnx file)")
    if manifest is not None and sha256_file(onnx_path) != manifest.sha256:
        raise ModelFileError(
            f"model file {str(onnx_path)!r} does not match the sha256 in its manifest: truncated or replaced"
        )
    return EncoderFile(onnx_path, manifest)


class OnnxFeatureExtractor:
    """Runs an exported encoder on uint8 RGB images, prepared exactly as the runtime prepares frames.

    The input spec comes from the manifest; for a bare .onnx it is read off the graph (uint8 NHWC
    with normalisation inside, or float NCHW normalised with ImageNet mean/std).
    """

    def __init__(self, encoder: EncoderFile) -> None:
        # CUDA rather than TensorRT: a one-off scoring pass would spend minutes building an engine, uncached
        self.session = create_session(encoder.onnx_path, without_tensorrt(resolve_providers("auto")))
        self.spec = encoder.manifest.input if encoder.manifest is not None else _spec_from_graph(self.session, encoder)
        self.image_size = (self.spec.height, self.spec.width)

    def __call__(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        out = []
        for start in range(0, len(images), batch_size):
            # Eval images are loaded square at the input size, like the random-init reference's: resize
            # only (`prepare` would also fit them to the capture's stored size and back).
            batch = self.spec.feed(resize_frames(images[start : start + batch_size], self.spec.height, self.spec.width))
            out.append(self.session.run(None, {self.spec.name: batch})[0].reshape(len(batch), -1))
        return finite_features(np.concatenate(out).astype(np.float32), "the exported encoder")


def _spec_from_graph(session: ort.InferenceSession, encoder: EncoderFile) -> InputSpec:
    inp = session.get_inputs()[0]
    uint8 = inp.type == "tensor(uint8)"
    shape = list(inp.shape)
    hw = shape[1:3] if uint8 else shape[2:4]
    channels = shape[3] if uint8 else shape[1]
    if len(shape) != 4 or channels not in CHANNEL_ORDERS or not all(isinstance(d, int) for d in hw):
        raise ModelFileError(
            f"{str(encoder.onnx_path)!r} input {inp.name!r} {inp.type} {shape} is not a fixed-size RGB or gray "
            "batch, and no manifest beside it says how to feed it"
        )
    mean, std = view_statistics(channels, normalize=True)  # what our exports fold in (a bare float graph: assumed)
    return InputSpec(
        name=inp.name,
        dtype="uint8" if uint8 else "float32",
        layout="NHWC" if uint8 else "NCHW",
        height=hw[0],
        width=hw[1],
        mean=tuple(mean),
        std=tuple(std),
        channel_order=CHANNEL_ORDERS[channels],
        channels=channels,
    )


def evaluate_export(
    path: Union[str, Path],
    data: Union[str, Path, LabelledImages],
    eval_cfg: EvalConfig,
    seed: int = 0,
    reference: bool = True,
    operator_model: Optional[ModelConfig] = None,
) -> EvalResult:
    """Score an exported encoder, and a seeded random-init encoder of its architecture, on one split.

    The reference is refused (ModelFileError) when the manifest names an encoder import string
    that `operator_model`, this machine's config, does not name too (`check_file_model`).

    `data` is "digits", an image folder, or already loaded images (at the encoder's image size).
    The reference needs the manifest's model section; without one it is skipped and a note says so.
    """
    started = time.perf_counter()
    encoder = resolve_encoder(path)
    extractor = OnnxFeatureExtractor(encoder)
    notes: list[str] = []
    if isinstance(data, LabelledImages):
        dataset = data
    else:
        dataset = load_eval_data(data, extractor.image_size, eval_cfg.max_images, seed)
    labels = dataset.labels
    train, test = dataset.split if dataset.split is not None else stratified_split(labels, eval_cfg.test_fraction, seed)
    feats = extractor(dataset.images)
    knn, linear = evaluate_features(feats, labels, train, test, eval_cfg.k, seed)

    random_knn = random_linear = None
    model_section = encoder.manifest.raw.get("model") if encoder.manifest is not None else None
    if reference and isinstance(model_section, dict) and model_section.get("encoder"):
        try:
            module = random_init_encoder(
                model_section,
                seed,
                operator_model,
                f"the manifest of {encoder.onnx_path.name}",
                channels=extractor.spec.channels,
            )
        except ConfigError as exc:
            notes.append(f"no random-init reference: {exc}")
        else:
            module = module.to("cuda" if torch.cuda.is_available() else "cpu")
            size = extractor.spec.height, extractor.spec.width
            ref = torch_features(module, resize_frames(dataset.images, *size), extractor.spec.mean, extractor.spec.std)
            random_knn, random_linear = evaluate_features(ref, labels, train, test, eval_cfg.k, seed)
    elif reference:
        notes.append("no random-init reference: the encoder has no manifest naming its architecture")
    step = encoder.manifest.step if encoder.manifest is not None else None
    young = young_encoder_note(step)
    if young is not None:
        notes.append(young)

    return EvalResult(
        encoder=str(encoder.onnx_path),
        version=encoder.manifest.version if encoder.manifest is not None else None,
        step=step,
        data=dataset.name,
        k=min(eval_cfg.k, len(train)),
        n_train=len(train),
        n_test=len(test),
        num_classes=len(dataset.classes),
        feature_dim=int(feats.shape[1]),
        knn_top1=knn,
        linear_top1=linear,
        random_knn_top1=random_knn,
        random_linear_top1=random_linear,
        seed=seed,
        seconds=time.perf_counter() - started,
        notes=notes,
    )
