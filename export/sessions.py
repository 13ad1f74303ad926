"""onnxruntime sessions, one owner: which execution providers to ask for, and how a session is opened.

Torch-free (onnxruntime and ctypes only), so the runtime inside a policy can use it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import onnxruntime as ort

from agent.core.errors import ConfigError, ModelFileError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
TRT_CACHE_DIR = "trt-cache"  # under an export dir: one subdirectory per model, named by its sha256
TRT_KEY_CHARS = 16  # hex digits of the sha256 that name a model's cache directory (64 bits)


def cuda_device_count() -> int:
    """CUDA devices visible through the driver API (no torch needed); 0 when there is no driver."""
    for lib in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(lib)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    return 0


def resolve_providers(choice: str) -> list[str]:
    """Execution providers to ask for, best first, from "auto" | "cpu" | "cuda" | "tensorrt".

    onnxruntime-gpu lists CUDA and TensorRT even on machines without a GPU (or without the
    TensorRT libraries); asking for them there only produces error logs, so "auto" checks for a
    device (and libnvinfer) first and quietly settles for the CPU.
    """
    available = set(ort.get_available_providers())
    gpu = (CUDA in available) and cuda_device_count() > 0
    trt = gpu and TENSORRT in available and ctypes.util.find_library("nvinfer") is not None
    if choice == "cpu":
        return [CPU]
    if choice == "tensorrt" and not trt:
        raise ConfigError("runtime.providers='tensorrt' but TensorRT or a CUDA device is not available here")
    if choice == "cuda" and not gpu:
        raise ConfigError("runtime.providers='cuda' but onnxruntime has no CUDA provider or no CUDA device is visible")
    if choice not in ("auto", "cuda", "tensorrt"):
        raise ConfigError(f"runtime.providers={choice!r}; allowed: auto, cpu, cuda, tensorrt")
    if trt and choice in ("auto", "tensorrt"):
        return [TENSORRT, CUDA, CPU]
    if gpu:
        return [CUDA, CPU]
    return [CPU]


def create_session(
    model_path: Path, providers: Sequence[Union[str, tuple[str, dict[str, Any]]]], threads: Optional[int] = None
) -> ort.InferenceSession:
    """The one way the project opens an ONNX file in onnxruntime.

    Built from the path, not from bytes: onnxruntime holds the GIL while it copies and parses a
    bytes model (tens of ms on ResNet-18, stalling every serving thread), but not for a file. Logs
    only errors; `threads` caps intra-op threads (inter-op 1). Raises ModelFileError (one line) for
    a file onnxruntime cannot load, whatever pybind error type it raised.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(model_path), options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own pybind types for bad models
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise ModelFileError(f"onnxruntime cannot load {model_path}: {first[:300]}") from None


def trt_cache_dir(root: Path, sha256: str, fp16: bool = False) -> Path:
    """TensorRT's engine cache for one model file: `root/<first 16 hex digits of its sha256>[-fp16]`.

    Keyed by content and precision: onnxruntime names its engine files by the model's graph, not
    by its weights or by `trt_fp16_enable`, so a model replaced under the same name, or the same
    model at another precision, would otherwise meet a stale engine. `root` is normally
    EXPORT_DIR/trt-cache (one cache per export directory).
    """
    return root / (sha256[:TRT_KEY_CHARS].lower() + ("-fp16" if fp16 else ""))


def tensorrt_options(
    input_name: str, one: tuple[int, ...], most: tuple[int, ...], cache_dir: Optional[Path], fp16: bool
) -> dict[str, Any]:
    """TensorRT provider options: one optimisation profile for batch shapes `one`..`most` (opt = `one`,
    the policy's usual single frame), the engine and timing caches in `cache_dir` (None: no cache,
    every session start rebuilds the engine, minutes for a ResNet-50), fp16 kernels where `fp16`.

    Option names from onnxruntime's TensorRT execution provider docs ("Configurations").
    """

    def shape(dims: tuple[int, ...]) -> str:
        return f"{input_name}:" + "x".join(str(d) for d in dims)

    options: dict[str, Any] = {
        "trt_profile_min_shapes": shape(one),
        "trt_profile_opt_shapes": shape(one),
        "trt_profile_max_shapes": shape(most),
        "trt_fp16_enable": bool(fp16),
    }
    if cache_dir is not None:
        options.update(
            trt_engine_cache_enable=True,
            trt_engine_cache_path=str(cache_dir),
            trt_timing_cache_enable=True,  # layer timings: a later version of the same net builds faster
            trt_timing_cache_path=str(cache_dir.parent),
        )
    return options


def without_tensorrt(
    providers: Sequence[Union[str, tuple[str, dict[str, Any]]]],
) -> list[Union[str, tuple[str, dict[str, Any]]]]:
    """`providers` less TensorRT: what a version is loaded with when TensorRT cannot build its engine."""
    return [p for p in providers if (p[0] if isinstance(p, tuple) else p) != TENSORRT]


def prune_trt_cache(root: Path, keep_sha256: set[str]) -> list[str]:
    """Delete model cache directories under `root` whose key matches none of `keep_sha256` (versions
    retention removed); returns the names deleted. Files in `root` itself (the timing cache) stay.
    A directory that cannot be deleted is logged and left."""
    keep = {sha[:TRT_KEY_CHARS].lower() for sha in keep_sha256}
    removed: list[str] = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if entry.is_dir() and entry.name.split("-")[0] not in keep:
            try:
                shutil.rmtree(entry)
            except OSError as exc:
                log.warning("could not remove the stale TensorRT cache %s: %s", entry, exc.strerror or exc)
                continue
            removed.append(entry.name)
    return removed
