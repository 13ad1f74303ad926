"""The machine's figures for benchmarks/gpu_check.sh: GPU, driver, CUDA, cuDNN, torch, onnxruntime (package,
version, providers and which of them can really run here), and the project's dependencies present or missing.

    python benchmarks/gpu_env.py            # one `key: value` line each; exit 0
"""

from __future__ import annotations

import ctypes.util
import importlib
import importlib.metadata as md
import os
import platform
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# import name -> distribution, for what pyproject.toml declares (core, dev, bench)
CORE = {
    "torch": "torch",
    "torchvision": "torchvision",
    "numpy": "numpy",
    "cv2": "opencv-python-headless",
    "onnx": "onnx",
    "onnxscript": "onnxscript",
    "onnxruntime": "onnxruntime",
    "zmq": "pyzmq",
    "pydantic": "pydantic",
    "yaml": "pyyaml",
    "matplotlib": "matplotlib",
    "sklearn": "scikit-learn",
}
DEV = {"pytest": "pytest", "pytest_timeout": "pytest-timeout", "importlinter": "import-linter", "xdist": "pytest-xdist"}
BENCH = {"byol_pytorch": "byol-pytorch", "kornia": "kornia"}


def version(dist: str) -> str:
    for name in (dist, f"{dist}-gpu") if dist == "onnxruntime" else (dist,):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            continue
    return "?"


def present(modules: dict[str, str]) -> tuple[list[str], list[str]]:
    found, missing = [], []
    for module, dist in modules.items():
        try:
            importlib.import_module(module)
        except Exception as exc:  # ImportError, or a broken install raising anything
            missing.append(f"{dist} ({exc.__class__.__name__})")
        else:
            found.append(f"{dist} {version(dist)}")
    return found, missing


def smi(query: str) -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi unavailable ({exc.__class__.__name__})"
    return out.stdout.strip().replace("\n", " | ") or out.stderr.strip()[:200]


def main() -> int:
    print(f"python: {sys.version.split()[0]} at {sys.executable}; {platform.platform()}; {os.cpu_count()} CPUs")
    print(f"nvidia-smi: {smi('name,driver_version,memory.total,compute_cap')}")
    try:
        import torch
    except Exception as exc:
        print(f"torch: cannot be imported ({exc.__class__.__name__}: {exc})")
    else:
        cuda = torch.cuda.is_available()
        print(
            f"torch: {torch.__version__} (CUDA build {torch.version.cuda}, cuDNN "
            f"{torch.backends.cudnn.version() if cuda else '-'}); cuda available {cuda}, devices "
            f"{torch.cuda.device_count() if cuda else 0}"
            + (
                f", {torch.cuda.get_device_name(0)}, capability {torch.cuda.get_device_capability(0)}, "
                f"bf16 {torch.cuda.is_bf16_supported()}"
                if cuda
                else ""
            )
        )
        print(f"nccl: {'.'.join(map(str, torch.cuda.nccl.version())) if cuda else '-'}")
    try:
        import onnxruntime as ort
    except Exception as exc:
        print(f"onnxruntime: cannot be imported ({exc.__class__.__name__}: {exc})")
    else:
        dists = []
        for dist in ("onnxruntime-gpu", "onnxruntime"):
            try:
                dists.append(f"{dist} {md.version(dist)}")
            except md.PackageNotFoundError:
                continue
        print(
            f"onnxruntime: {ort.__version__} (installed as {', '.join(dists) or '?'}); listed providers "
            f"{ort.get_available_providers()}; libnvinfer {ctypes.util.find_library('nvinfer') or 'not found'}"
        )
        from agent.core.errors import ConfigError
        from export.sessions import resolve_providers

        for choice in ("auto", "cuda", "tensorrt"):
            try:
                print(f"runtime.providers={choice}: {resolve_providers(choice)}")
            except ConfigError as exc:
                print(f"runtime.providers={choice}: cannot run here: {exc}")
    for label, modules in (("core", CORE), ("dev", DEV), ("bench", BENCH)):
        found, missing = present(modules)
        print(f"deps {label}: present {', '.join(found) or '-'}; missing {', '.join(missing) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
