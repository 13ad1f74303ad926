"""Which onnxruntime execution providers to ask for: one answer for the runtime, evaluation and verification.

Torch-free (onnxruntime and ctypes only), so the runtime inside a policy can use it.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import onnxruntime as ort

from agent.core.errors import ConfigError

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
