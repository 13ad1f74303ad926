"""The export directory's contract: file names, the `LATEST` pointer and the manifest schema.

Written by `export.publish`, read by `agent.robot.runtime` and `byol-agent eval`. Torch-free, so a
policy process can read it with numpy, OpenCV and onnxruntime alone. Everything read from disk is
validated here and turned into `ModelFileError` naming the file, because the directory may hold
half-copied or hand-edited files.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

import numpy as np

from agent.core.errors import ModelFileError
from agent.core.frames import fit_frames, resize_frames, to_channels
from agent.core.normalise import normalise_nchw
from agent.core.wire import MAX_SIDE

MANIFEST_FORMAT = "byol-agent-encoder/1"
LATEST_NAME = "LATEST"
FitMode = Literal["crop", "stretch"]  # how capture fits frames to its stored size (`capture.resize`)
# Every file of version N is encoder-NNNNNN.<kind>: the manifest (.json), the served model (.onnx), what other
# export targets write (export/targets/: .pt torch weights) and compatibility maps (.map.npz, .to-PPPPPP.map.npz).
_FILE_RE = re.compile(r"^encoder-(\d{6,})\.(json|map\.npz|to-\d{6,}\.map\.npz|[a-z0-9_]+)$")
MODEL_SUFFIX = ".onnx"  # the file a runtime serves (`model_file`); other artifacts are listed under "artifacts"
_ONNX_DTYPES = {"uint8": "tensor(uint8)", "float32": "tensor(float)"}
CHANNEL_ORDERS = {3: "RGB", 1: "GRAY"}  # channels -> channel_order


def artifact_filename(version: int, suffix: str) -> str:
    """`encoder-NNNNNN<suffix>`: the name of a version's file of one export target (suffix with its dot)."""
    return f"encoder-{version:06d}{suffix}"


def model_filename(version: int) -> str:
    return artifact_filename(version, MODEL_SUFFIX)


def manifest_filename(version: int) -> str:
    return f"encoder-{version:06d}.json"


def parse_version(name: str) -> Optional[int]:
    """Version number of an `encoder-NNNNNN.<kind>` name (.onnx, .json, .pt, .map.npz, .to-PPPPPP.map.npz); None for
    anything else (temp files included)."""
    match = _FILE_RE.match(name)
    return int(match.group(1)) if match else None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str, what: str, gone: str = "is missing") -> None:
    """ModelFileError (one line starting with `what`) unless the file at `path` hashes to `expected`:
    "`what` `gone`" when it is not there, "... is unreadable (...)", or "... does not match the sha256 in
    its manifest". The one check of a published file against its manifest (model, compatibility map)."""
    try:
        actual = sha256_file(path)
    except FileNotFoundError:
        raise ModelFileError(f"{what} {gone}") from None
    except OSError as exc:
        raise ModelFileError(f"{what} is unreadable ({exc.strerror})") from None
    if actual != expected:
        raise ModelFileError(f"{what} does not match the sha256 in its manifest: truncated, corrupt or replaced")


def read_verified(export_dir: Path, name: str, context: Optional[str] = None) -> "Manifest":
    """The manifest `name` in `export_dir` with its model file checked against its sha256.
    ModelFileError (one line, "`context`: its model file ..." when given) for a bad manifest or a
    model file that is gone, unreadable or does not match."""
    manifest = read_manifest(Path(export_dir) / name)
    model = Path(export_dir) / manifest.model_file
    what = (
        f"version {manifest.version}'s model file {model}" if context is None else f"{context}: its model file {model}"
    )
    check_sha256(model, manifest.sha256, what, gone="is gone")
    return manifest


def verified_artifact(export_dir: Path, manifest: "Manifest", name: str) -> Path:
    """The path of `manifest`'s artifact `name` (e.g. "torch_weights", `export.torch_weights`), checked against
    the sha256 its manifest records. ModelFileError (one line) when the version has no such artifact or the
    file is gone, unreadable or altered."""
    entry = manifest.raw.get("artifacts", {}).get(name) if isinstance(manifest.raw.get("artifacts"), dict) else None
    if not isinstance(entry, dict) or parse_version(str(entry.get("file", ""))) != manifest.version:
        listed = ", ".join(sorted(manifest.raw.get("artifacts") or {})) or "none"
        raise ModelFileError(f"version {manifest.version} has no {name!r} artifact (it has: {listed})")
    path = Path(export_dir) / str(entry["file"])
    check_sha256(path, str(entry.get("sha256")), f"version {manifest.version}'s {name} file {path}")
    return path


@dataclass(frozen=True)
class InputSpec:
    """What the graph takes; `prepare` turns robot frames (uint8 NHWC RGB, any size) into exactly that.

    `channels` is 3 (RGB) or 1 (gray, `channel_order` "GRAY": a mono encoder, whose RGB frames
    `fit` converts with the same luma formula as mono capture); `mean`/`std` hold one value each.
    """

    name: str
    dtype: str  # "uint8" (NHWC, normalisation in the graph) or "float32" (NCHW, already normalised)
    layout: str
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channel_order: str = "RGB"
    # How capture stored the frames the encoder learnt from (`capture.height/width/resize`): serving fits a
    # camera frame to that first, so the policy's frames are prepared exactly as the training frames were.
    # None (manifests from before this field): frames are resized straight to the input size.
    stored: Optional[tuple[int, int, FitMode]] = None
    channels: int = 3

    @property
    def normalisation_in_graph(self) -> bool:
        return self.dtype == "uint8"

    @property
    def onnx_type(self) -> str:
        return _ONNX_DTYPES[self.dtype]

    def shape(self, batch: int) -> tuple[int, int, int, int]:
        if self.layout == "NHWC":
            return (batch, self.height, self.width, self.channels)
        return (batch, self.channels, self.height, self.width)

    def fit(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (N,H,W,C) RGB or gray frames of any size → uint8 (N, height, width, channels): first fitted to
        the stored size as capture fits them (centre crop or stretch), resized (INTER_AREA), then converted
        to the input's channels (`agent.core.frames.to_channels`)."""
        if self.stored is not None:
            frames = fit_frames(frames, self.stored[0], self.stored[1], self.stored[2])
        return to_channels(resize_frames(frames, self.height, self.width), self.channels)

    def prepare(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (N,H,W,C) frames of any size → the graph's input: `fit`, then normalised unless the graph does it."""
        return self.feed(self.fit(frames))

    def feed(self, frames: np.ndarray) -> np.ndarray:
        """Frames already at the input size (from `fit`, or RGB ones converted here) → the graph's input."""
        frames = to_channels(frames, self.channels)
        if self.normalisation_in_graph:
            return frames
        return normalise_nchw(frames, self.mean, self.std)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "layout": self.layout,
            "height": self.height,
            "width": self.width,
            "channel_order": self.channel_order,
            "channels": self.channels,
            **({} if self.stored is None else {"stored": dict(zip(("height", "width", "fit"), self.stored))}),
            "normalisation": {
                "in_graph": self.normalisation_in_graph,
                "formula": "(x / 255 - mean) / std",
                "mean": list(self.mean),
                "std": list(self.std),
            },
        }

    @classmethod
    def from_json(cls, tree: dict[str, Any]) -> "InputSpec":
        norm = tree["normalisation"]
        spec = cls(
            name=str(tree["name"]),
            dtype=str(tree["dtype"]),
            layout=str(tree["layout"]),
            height=int(tree["height"]),
            width=int(tree["width"]),
            mean=tuple(float(v) for v in norm["mean"]),
            std=tuple(float(v) for v in norm["std"]),
            channel_order=str(tree["channel_order"]),
            stored=_stored(tree.get("stored")),
            channels=int(tree.get("channels", 3)),  # manifests from before this field are RGB
        )
        expected_layout = {"uint8": "NHWC", "float32": "NCHW"}.get(spec.dtype)
        if expected_layout is None or spec.layout != expected_layout:
            raise ValueError(f"unsupported input dtype/layout {spec.dtype}/{spec.layout}")
        order = CHANNEL_ORDERS.get(spec.channels)
        if (
            order is None
            or spec.channel_order != order
            or len(spec.mean) != spec.channels
            or len(spec.std) != spec.channels
        ):
            raise ValueError("input must be 3-channel RGB or 1-channel GRAY with one mean/std value per channel")
        if spec.height < 1 or spec.width < 1:
            raise ValueError(f"bad input size {spec.height}x{spec.width}")
        return spec


def _stored(tree: Any) -> Optional[tuple[int, int, FitMode]]:
    if tree is None:
        return None
    height, width, fit = int(tree["height"]), int(tree["width"]), str(tree["fit"])
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE) or fit not in ("crop", "stretch"):
        raise ValueError(f"bad stored frame description {tree!r}")
    return height, width, "crop" if fit == "crop" else "stretch"


@dataclass(frozen=True)
class Manifest:
    """A published version, as read back: enough to check the ONNX file and feed it."""

    version: int
    step: int
    model_file: str
    sha256: str
    input: InputSpec
    output_name: str
    output_dim: int
    raw: dict[str, Any]


def parse_manifest(tree: Any, source: str) -> Manifest:
    """Validate a manifest's JSON tree; ModelFileError naming `source` if anything is missing or off."""
    try:
        if tree.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format is {tree.get('format')!r}, expected {MANIFEST_FORMAT!r}")
        version = int(tree["version"])
        model_file = str(tree["model_file"])
        if model_file != model_filename(version):
            raise ValueError(f"model_file {model_file!r} does not match version {version}")
        sha = str(tree["sha256"])
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise ValueError("sha256 is not a hex digest")
        output = tree["output"]
        dim = int(output["dim"])
        if dim < 1:
            raise ValueError(f"output dim {dim}")
        return Manifest(
            version=version,
            step=int(tree["step"]),
            model_file=model_file,
            sha256=sha,
            input=InputSpec.from_json(tree["input"]),
            output_name=str(output["name"]),
            output_dim=dim,
            raw=tree,
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ModelFileError(f"manifest {source} is invalid: {detail}") from None


def read_manifest(path: Union[str, Path]) -> Manifest:
    path = Path(path)
    try:
        tree = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelFileError(f"manifest {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"manifest {path} is unreadable or not JSON ({exc.__class__.__name__})") from None
    manifest = parse_manifest(tree, str(path))
    if path.name != manifest_filename(manifest.version):
        raise ModelFileError(f"manifest {path} claims version {manifest.version}")
    return manifest


def read_latest(export_dir: Path) -> Optional[str]:
    """The manifest file name `LATEST` points at; None when nothing was published yet.

    Only a bare `encoder-NNNNNN.json` name is accepted, so a tampered pointer cannot lead outside
    the directory.
    """
    try:
        name = (export_dir / LATEST_NAME).read_text().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{export_dir / LATEST_NAME} is unreadable ({exc.__class__.__name__})") from None
    if not name.endswith(".json") or parse_version(name) is None:
        raise ModelFileError(f"{export_dir / LATEST_NAME} does not name a manifest (holds {name[:60]!r})")
    return name
