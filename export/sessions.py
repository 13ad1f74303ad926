"""onnxruntime sessions, one owner: which execution providers to ask for, and how a session is opened.

Torch-free (onnxruntime and ctypes only), so the runtime inside a policy can use it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import onnxruntime as ort

from agent.core.errors import ConfigError, ModelFileError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"


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
