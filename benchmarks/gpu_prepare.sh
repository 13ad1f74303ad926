#!/usr/bin/env bash
# Run on a machine that reaches PyPI, before lending the tree to a GPU machine that reaches nothing:
# fills .gpu-check/ (git-ignored) with what benchmarks/gpu_check.sh needs and that machine may lack:
#   .gpu-check/wheels/        the project's pure dependencies missing from a CUDA image (pyzmq, pydantic and
#                             its core, the bench extra: byol-pytorch 0.9.1 + beartype, kornia + kornia-rs),
#                             for CPython $PYVER on manylinux x86_64, no dependencies resolved (torch,
#                             torchvision, numpy, onnxruntime, OpenCV, ... are the image's own)
#   .gpu-check/cifar10-dev.tar.gz   the dev photos for the learning check (from ../shared/data)
# Then carry `.gpu-check` with the run (a few MB).      usage: benchmarks/gpu_prepare.sh [PYVER, default 3.12]
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYVER=${1:-3.12}
DEST="$REPO/.gpu-check"
mkdir -p "$DEST/wheels"
fetch() {
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST/wheels" "$@"
}
fetch pydantic pyzmq typing-extensions typing-inspection annotated-types byol-pytorch==0.9.1 beartype kornia
core=$(unzip -p "$DEST"/wheels/pydantic-[0-9]*.whl '*/METADATA' | sed -n 's/^Requires-Dist: pydantic-core *==\([0-9.]*\).*/\1/p')
fetch "pydantic-core==$core"
rs=$(unzip -p "$DEST"/wheels/kornia-[0-9]*.whl '*/METADATA' | sed -n 's/^Requires-Dist: kornia-rs *\(.*\)$/\1/p' | head -1)
fetch "kornia-rs${rs}"
for data in "${GPU_CHECK_DATA:-}" "$REPO/shared/data/cifar10-dev.tar.gz" "$REPO/../shared/data/cifar10-dev.tar.gz" \
            "$REPO/../../shared/data/cifar10-dev.tar.gz"; do
    if [ -n "$data" ] && [ -f "$data" ]; then cp "$data" "$DEST/cifar10-dev.tar.gz"; break; fi
done
ls -la "$DEST" "$DEST/wheels"
du -sh "$DEST"
