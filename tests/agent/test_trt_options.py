"""TensorRT as its users run it, the parts a machine without a GPU can check: the provider options built
for each config, the engine cache per export directory keyed by the model's sha256, pruning caches of
versions retention removed, and the fallback when TensorRT cannot load (onnxruntime-gpu lists the
TensorRT provider on machines without libnvinfer or a GPU, so asking for it really fails here).
The CUDA-only half (an engine built on the swap thread, reused after a restart) is in tests/cuda/."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import onnxruntime as ort
import pytest

from agent.robot.version_loader import VersionLoader
from export.manifest import manifest_filename, read_manifest
from export.sessions import CPU, TENSORRT, prune_trt_cache, tensorrt_options, trt_cache_dir, without_tensorrt
from tests.export.tiny import publish_version


def test_tensorrt_options_follow_the_config(tmp_path: Path) -> None:
    cache = trt_cache_dir(tmp_path / "trt-cache", "AB" * 32)
    assert cache == tmp_path / "trt-cache" / ("ab" * 8)
    assert trt_cache_dir(tmp_path, "AB" * 32, fp16=True).name == "ab" * 8 + "-fp16"  # engines differ by precision
    on = tensorrt_options("frames", (1, 32, 32, 3), (64, 32, 32, 3), cache, fp16=True)
    assert on == {
        "trt_profile_min_shapes": "frames:1x32x32x3",
        "trt_profile_opt_shapes": "frames:1x32x32x3",
        "trt_profile_max_shapes": "frames:64x32x32x3",
        "trt_fp16_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(tmp_path / "trt-cache"),
    }
    off = tensorrt_options("x", (1, 3, 8, 8), (4, 3, 8, 8), None, fp16=False)
    assert off["trt_fp16_enable"] is False and not any("cache" in key for key in off)
    providers = [(TENSORRT, on), "CUDAExecutionProvider", CPU]
    assert without_tensorrt(providers) == ["CUDAExecutionProvider", CPU]


def test_stale_engine_caches_are_pruned_and_the_timing_cache_stays(tmp_path: Path) -> None:
    keep, gone = "1" * 64, "2" * 64
    for sha in (keep, gone):
        for fp16 in (False, True):
            trt_cache_dir(tmp_path, sha, fp16).mkdir(parents=True)
            (trt_cache_dir(tmp_path, sha, fp16) / "model.engine").write_bytes(b"e")
    (tmp_path / "timing.cache").write_bytes(b"t")
    assert sorted(prune_trt_cache(tmp_path, {keep})) == ["2" * 16, "2" * 16 + "-fp16"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1" * 16, "1" * 16 + "-fp16", "timing.cache"]
    assert prune_trt_cache(tmp_path / "missing", {keep}) == []


@pytest.mark.skipif(
    TENSORRT not in ort.get_available_providers(), reason="this onnxruntime has no TensorRT provider at all"
)
def test_a_version_tensorrt_cannot_take_is_served_without_it_and_logged(tmp_path: Path, caplog) -> None:
    version = publish_version(tmp_path, seed=1)
    manifest = read_manifest(tmp_path / manifest_filename(version))
    loader = VersionLoader(tmp_path, [TENSORRT, CPU], threads=1, stop=threading.Event(), trt_fp16=True)
    with caplog.at_level(logging.WARNING, logger="agent.robot.version_loader"):
        loaded = loader.load(manifest_filename(version))
    active = loaded.session.get_providers()
    if TENSORRT in active:  # a machine where TensorRT really loads: the CUDA tests cover it
        pytest.skip("TensorRT loads on this machine")
    assert active == [CPU] and loaded.max_batch is None  # only an engine sets a batch ceiling
    assert any("TensorRT did not take version 1" in r.getMessage() for r in caplog.records)
    # the engine cache directory for this very file was prepared (keyed by content, under the export dir)
    assert trt_cache_dir(tmp_path / "trt-cache", manifest.sha256, fp16=True).is_dir()
