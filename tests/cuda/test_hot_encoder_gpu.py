"""`HotEncoder` on onnxruntime's CUDA and TensorRT providers: swaps under load with zero failed calls, the
TensorRT engine built by the loader's warm-up (never on a serving call), cached per model sha256 and
reused by a restart, fp16 where asked, and calls above the engine's batch split rather than rebuilt.

Skipped, each with the reason, where CUDA, onnxruntime's GPU providers or TensorRT's libraries are
missing (plain `onnxruntime` has neither provider; TensorRT needs libnvinfer beside onnxruntime-gpu).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.robot.runtime import HotEncoder
from agent.robot.version_loader import TRT_MAX_BATCH
from agent.robot.version_watcher import SwapEvent
from export.manifest import manifest_filename, read_manifest
from export.sessions import TENSORRT, trt_cache_dir
from tests.agent.test_runtime import CheckedCallers, reference, wait_until
from tests.cuda.gpu import needs_cuda, ort_providers_or_skip
from tests.export.tiny import publish_version, scene_frames

pytestmark = needs_cuda

POLL = 0.05
ATOL = 5e-2  # TF32 convolutions (cuDNN, TensorRT) against the fp32 torch reference; versions differ by O(1)
BUILD_S = 300.0  # a TensorRT engine build, even of a tiny net, takes seconds to minutes


def engines(cache: Path) -> dict[str, int]:
    """Engine files in one model's cache directory, with their mtimes (a rebuild rewrites them)."""
    return {p.name: p.stat().st_mtime_ns for p in cache.glob("*.engine")}


@pytest.mark.parametrize("choice", ["cuda", "tensorrt"])
def test_swaps_under_load_on_the_gpu_fail_no_call(tmp_path: Path, choice: str) -> None:
    wanted = ort_providers_or_skip(choice)[0]
    frames = scene_frames(4, seed=9)
    seeds = {1: 21, 2: 22, 3: 23}
    expected = {version: reference(seed, frames[:1]) for version, seed in seeds.items()}
    publish_version(tmp_path, seed=seeds[1])
    with HotEncoder(tmp_path, poll_interval_s=POLL, providers=choice) as enc:
        assert enc.providers[0] == wanted, enc.providers  # not a silent fallback to another provider
        with CheckedCallers(enc, frames[:1], expected, atol=ATOL) as callers:
            for version in (2, 3):
                publish_version(tmp_path, seed=seeds[version])
                wait_until(lambda version=version: callers.served_at_least(version), timeout_s=BUILD_S)
        assert not callers.errors, callers.errors[0]
        assert set(callers.served) == {1, 2, 3} and enc.swaps == 2 and enc.failed_loads == 0
        assert enc.providers[0] == wanted
        assert callers.most_resident <= 2


def test_tensorrt_builds_on_the_swap_thread_caches_by_sha256_and_a_restart_reuses_the_engine(tmp_path: Path) -> None:
    ort_providers_or_skip("tensorrt")
    v1 = publish_version(tmp_path, seed=1)
    root = tmp_path / "trt-cache"
    cache1 = trt_cache_dir(root, read_manifest(tmp_path / manifest_filename(v1)).sha256)
    built_at_swap: list[bool] = []

    def on_swap(event: SwapEvent) -> None:  # runs right after the swap, before any call reaches the new version
        sha = event.manifest["sha256"]
        built_at_swap.append(bool(engines(trt_cache_dir(root, sha))))

    with HotEncoder(tmp_path, poll_interval_s=POLL, providers="tensorrt", on_swap=on_swap) as enc:
        assert enc.providers[0] == TENSORRT
        first = engines(cache1)
        assert first, f"no engine cached in {cache1}: {sorted(p.name for p in root.rglob('*'))}"
        publish_version(tmp_path, seed=2)
        wait_until(lambda: enc.version == 2, timeout_s=BUILD_S)
        big = scene_frames(TRT_MAX_BATCH + 6, seed=2)  # above the engine's profile: split, never rebuilt on a call
        np.testing.assert_allclose(enc.embed(big), reference(2, big), atol=ATOL)
    assert built_at_swap == [True, True], "each engine existed before the version served its first call"

    cache2 = trt_cache_dir(root, read_manifest(tmp_path / manifest_filename(2)).sha256)
    saved = engines(cache2)
    assert saved
    with HotEncoder(tmp_path, poll_interval_s=POLL, providers="tensorrt") as enc:  # a restart on version 2
        assert enc.providers[0] == TENSORRT and enc.version == 2
        np.testing.assert_allclose(enc.embed(big[:1]), reference(2, big[:1]), atol=ATOL)
    assert engines(cache2) == saved, "the restart loaded the cached engine, it did not rebuild it"


def test_tensorrt_fp16_serves_close_to_the_fp32_reference(tmp_path: Path) -> None:
    ort_providers_or_skip("tensorrt")
    version = publish_version(tmp_path, seed=5)
    frames = scene_frames(8, seed=4)
    with HotEncoder(tmp_path, providers="tensorrt", trt_fp16=True) as enc:
        assert enc.providers[0] == TENSORRT
        out = enc.embed(frames)
    expected = reference(5, frames)
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(out, expected, atol=2e-2 * scale)
    sha = read_manifest(tmp_path / manifest_filename(version)).sha256
    assert engines(trt_cache_dir(tmp_path / "trt-cache", sha, fp16=True))  # its own cache, apart from fp32 engines
