"""HotEncoder: real ONNX files, real onnxruntime, real threads; broken files in the directory are never served."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from agent.core.errors import ModelFileError
from agent.core.frames import FrameFormatError, resize_frames
from agent.robot.runtime import HotEncoder
from agent.robot.version_watcher import SwapEvent
from export.manifest import sha256_file
from export.onnx_export import input_spec
from export.sessions import resolve_providers
from export.verify import torch_reference
from tests.export.tiny import IMAGE_SIZE, publish_version, scene_frames, tiny_encoder
from trainer.normalise import IMAGENET_MEAN, IMAGENET_STD

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
POLL = 0.05


def wait_until(predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def reference(seed: int, frames: np.ndarray) -> np.ndarray:
    spec = input_spec("uint8_nhwc", IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD)
    return torch_reference(tiny_encoder(seed), resize_frames(frames, IMAGE_SIZE, IMAGE_SIZE), spec)


@pytest.fixture
def frames() -> np.ndarray:
    return scene_frames(4, seed=9)


def test_serves_the_published_encoder_for_any_frame_size(tmp_path: Path, frames: np.ndarray) -> None:
    publish_version(tmp_path, seed=1)
    with HotEncoder(tmp_path, poll_interval_s=POLL, providers="cpu") as enc:
        assert enc.version == 1 and enc.output_dim == 16
        np.testing.assert_allclose(enc.embed(frames), reference(1, frames), atol=1e-4)
        single = enc.embed(frames[0])  # (H, W, 3) works too, and is resized like the batch
        assert single.shape == (1, 16)
        np.testing.assert_allclose(single[0], reference(1, frames[:1])[0], atol=1e-4)
        with pytest.raises(FrameFormatError, match="uint8"):
            enc.embed(frames.astype(np.float32))
        with pytest.raises(FrameFormatError, match="RGB"):
            enc.embed(frames[..., :1])
    with pytest.raises(ModelFileError, match="closed"):
        enc.embed(frames)


def test_float_nchw_export_is_fed_normalised_frames(tmp_path: Path, frames: np.ndarray) -> None:
    publish_version(tmp_path, seed=2, input_format="float_nchw")
    with HotEncoder(tmp_path, providers="cpu") as enc:
        np.testing.assert_allclose(enc.embed(frames), reference(2, frames), atol=1e-4)


def test_no_export_and_no_wait_fails_with_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError) as info:
        HotEncoder(tmp_path / "exports", wait=False)
    assert "LATEST" in str(info.value) and "\n" not in str(info.value)


def test_waiting_honours_its_timeout(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="within 0.2 s"):
        HotEncoder(tmp_path, wait=True, timeout_s=0.2, poll_interval_s=POLL)


def test_started_before_any_export_waits_for_the_first(tmp_path: Path, frames: np.ndarray) -> None:
    export_dir = tmp_path / "exports"  # does not even exist yet
    result: dict[str, HotEncoder] = {}
    errors: list[BaseException] = []

    def start() -> None:
        try:
            result["enc"] = HotEncoder(export_dir, poll_interval_s=POLL, timeout_s=60)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    waiter = threading.Thread(target=start)
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive() and not errors  # still waiting: nothing is published
    publish_version(export_dir, seed=3)
    waiter.join(60)
    assert not errors and "enc" in result
    with result["enc"] as enc:
        assert enc.version == 1 and enc.swaps == 0
        np.testing.assert_allclose(enc.embed(frames), reference(3, frames), atol=1e-4)


def _truncate(export_dir: Path, version: int) -> None:
    model = export_dir / f"encoder-{version:06d}.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # a half-copied file


def _corrupt_with_matching_hash(export_dir: Path, version: int) -> None:
    model = export_dir / f"encoder-{version:06d}.onnx"
    model.write_bytes(b"\x08\x07garbage that is not a protobuf" * 50)
    manifest_path = export_dir / f"encoder-{version:06d}.json"
    tree = json.loads(manifest_path.read_text())
    tree["sha256"] = sha256_file(model)  # consistent hash: only onnxruntime can tell
    manifest_path.write_text(json.dumps(tree))


def _swap_in_other_model(export_dir: Path, version: int) -> None:
    other = export_dir / "other"
    publish_version(other, seed=99)
    shutil.copy(other / "encoder-000001.onnx", export_dir / f"encoder-{version:06d}.onnx")  # valid ONNX, wrong hash


def _garbage_manifest(export_dir: Path, version: int) -> None:
    (export_dir / f"encoder-{version:06d}.json").write_text('{"format": "byol-agent-encoder/1", "version": ')


def _wrong_dimension(export_dir: Path, version: int) -> None:
    (export_dir / f"encoder-{version:06d}.onnx").unlink()
    (export_dir / f"encoder-{version:06d}.json").unlink()
    publish_version(export_dir, seed=5, width=24)


def _latest_outside(export_dir: Path, version: int) -> None:
    (export_dir / "LATEST").write_text("../outside.json\n")


@pytest.mark.parametrize(
    "damage, needle",
    [
        (_truncate, "sha256"),
        (_corrupt_with_matching_hash, "onnxruntime cannot load"),
        (_swap_in_other_model, "sha256"),
        (_garbage_manifest, "not JSON"),
        (_wrong_dimension, "D=24"),
        (_latest_outside, "does not name a manifest"),
    ],
    ids=["truncated", "corrupt", "hash-mismatch", "bad-manifest", "other-dimension", "latest-outside"],
)
def test_broken_versions_are_never_served(
    tmp_path: Path, frames: np.ndarray, damage: Callable[[Path, int], None], needle: str
) -> None:
    exports = tmp_path / "exports"
    publish_version(exports, seed=1)
    with HotEncoder(exports, poll_interval_s=POLL, providers="cpu") as enc:
        publish_version(exports, seed=2)
        wait_until(lambda: enc.version == 2)
        # Version 3 is published elsewhere, damaged, and then deployed: files first, LATEST last.
        staging = tmp_path / "staging"
        shutil.copytree(exports, staging)
        publish_version(staging, seed=3)
        damage(staging, 3)
        for name in ("encoder-000003.onnx", "encoder-000003.json"):
            shutil.copy(staging / name, exports / name)
        shutil.copy(staging / "LATEST", exports / "LATEST.new")
        os.replace(exports / "LATEST.new", exports / "LATEST")
        wait_until(lambda: enc.failed_loads == 1)
        assert needle in (enc.last_error or "")
        assert enc.version == 2
        np.testing.assert_allclose(enc.embed(frames), reference(2, frames), atol=1e-4)
        time.sleep(5 * POLL)  # several more polls of the same broken files: tried once, logged once
        assert enc.failed_loads == 1 and enc.version == 2
        publish_version(exports, seed=4)  # the next good version is picked up as usual
        wait_until(lambda: enc.version >= 4)
        np.testing.assert_allclose(enc.embed(frames), reference(4, frames), atol=1e-4)


def test_a_runtime_started_on_a_damaged_latest_serves_the_newest_good_version(
    tmp_path: Path, frames: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    """A robot rebooting after a bad write once logged "still serving version none" and never served."""
    for seed in range(1, 7):
        publish_version(tmp_path, seed=seed)
    _truncate(tmp_path, 6)
    _garbage_manifest(tmp_path, 5)
    with caplog.at_level("WARNING", logger="agent.robot.runtime"):
        with HotEncoder(tmp_path, poll_interval_s=POLL, providers="cpu", wait=False) as enc:
            assert enc.version == 4
            np.testing.assert_allclose(enc.embed(frames), reference(4, frames), atol=1e-4)
            assert "version 6" in caplog.text and "version 5" in caplog.text  # the skipped ones are named
            publish_version(tmp_path, seed=7)  # and it keeps watching for a good newer one
            wait_until(lambda: enc.version == 7)
            np.testing.assert_allclose(enc.embed(frames), reference(7, frames), atol=1e-4)
    (tmp_path / "LATEST").write_bytes(b"\xff\x00 not a name")  # LATEST itself unreadable: the same fallback
    with HotEncoder(tmp_path, poll_interval_s=POLL, providers="cpu", wait=False) as enc:
        assert enc.version == 7
    (tmp_path / "LATEST").unlink()  # LATEST gone altogether, versions still there: the same fallback
    with HotEncoder(tmp_path, poll_interval_s=POLL, providers="cpu", wait=False) as enc:
        assert enc.version == 7


@pytest.mark.parametrize("mode", ["crop", "stretch"])
def test_serving_prepares_a_camera_frame_exactly_as_capture_stored_it(tmp_path: Path, mode: str) -> None:
    """Capture centre-cropped a 640x480 frame while HotEncoder stretched it: the policy saw another image."""
    from agent.core.config import CaptureConfig, ExportConfig
    from agent.core.frames import fit_frame
    from export.exporter import export_encoder
    from export.publish import Publisher
    from tests.export.tiny import model_cfg

    capture = CaptureConfig(height=40, width=40, resize=mode)
    export_encoder(
        0,
        tiny_encoder(3),
        scene_frames(12),
        export_cfg=ExportConfig(),
        model_cfg=model_cfg(),
        publisher=Publisher(tmp_path, 5),
        capture=capture,
    )
    rng = np.random.default_rng(0)
    camera = np.clip(scene_frames(1, size=640)[0][:480] + rng.integers(0, 20, (480, 640, 3)), 0, 255).astype(np.uint8)
    camera[:, :80] = 255  # the borders a crop removes and a stretch keeps
    stored = fit_frame(camera, 40, 40, mode)  # what capture puts on the wire and the trainer learns from
    with HotEncoder(tmp_path, poll_interval_s=POLL, providers="cpu") as enc:
        assert enc.manifest["input"]["stored"] == {"height": 40, "width": 40, "fit": mode}
        np.testing.assert_allclose(enc.embed(camera), enc.embed(stored), atol=1e-5)


class CheckedCallers:
    """`threads` threads calling `enc.embed_with_version(frames)` until the block ends, each answer checked
    against `expected[version]` (it must come wholly from the version that claims it). `served` counts
    calls per version, `errors` holds any failure at all (what these tests count), `most_resident` the
    most sessions seen loaded at once. `atol`: wider on GPU providers (TF32 / TensorRT kernels)."""

    def __init__(
        self, enc: HotEncoder, frames: np.ndarray, expected: dict[int, np.ndarray], threads: int = 2, atol: float = 1e-4
    ) -> None:
        self._enc, self._frames, self._expected, self._atol = enc, frames, expected, atol
        self.served: dict[int, int] = {}
        self.errors: list[BaseException] = []
        self.most_resident = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._call) for _ in range(threads)]

    def _call(self) -> None:
        while not self._stop.is_set():
            try:
                out, version = self._enc.embed_with_version(self._frames)
                np.testing.assert_allclose(out, self._expected[version], atol=self._atol)
            except BaseException as exc:  # any failure at all is what this test counts
                self.errors.append(exc)
                return
            with self._lock:
                self.served[version] = self.served.get(version, 0) + 1
                self.most_resident = max(self.most_resident, self._enc.resident_sessions)

    def served_at_least(self, version: int, calls: int = 5) -> bool:
        """For wait_until: `version` served `calls` times, or a call failed (then stop waiting)."""
        return self.served.get(version, 0) >= calls or bool(self.errors)

    def __enter__(self) -> "CheckedCallers":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def test_swaps_under_concurrent_load_drop_nothing_and_serve_every_version(tmp_path: Path, frames: np.ndarray) -> None:
    seeds = {1: 21, 2: 22, 3: 23, 4: 24}
    expected = {version: reference(seed, frames[:1]) for version, seed in seeds.items()}
    publish_version(tmp_path, seed=seeds[1])
    swaps: list[SwapEvent] = []

    with HotEncoder(tmp_path, poll_interval_s=POLL, on_swap=swaps.append, providers="cpu", threads=1) as enc:
        with CheckedCallers(enc, frames[:1], expected) as callers:
            for version in (2, 3, 4):
                publish_version(tmp_path, seed=seeds[version])
                wait_until(lambda version=version: callers.served_at_least(version))
        assert not callers.errors, callers.errors[0]
        assert set(callers.served) == {1, 2, 3, 4} and enc.swaps == 3
        assert [(s.old_version, s.new_version) for s in swaps] == [(None, 1), (1, 2), (2, 3), (3, 4)]
        assert callers.most_resident <= 2
        wait_until(lambda: enc.resident_sessions == 1)  # the old session is released once calls let go


def test_a_failing_swap_callback_does_not_stop_later_swaps(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    publish_version(tmp_path, seed=1)
    seen: list[int] = []

    def callback(event: SwapEvent) -> None:
        seen.append(event.new_version)
        raise ValueError("policy recalibration failed")

    with caplog.at_level("INFO", logger="agent.robot.runtime"):
        with HotEncoder(tmp_path, poll_interval_s=POLL, on_swap=callback, providers="cpu") as enc:
            publish_version(tmp_path, seed=2)
            wait_until(lambda: enc.version == 2)
            publish_version(tmp_path, seed=3)
            wait_until(lambda: enc.version == 3)
    assert seen == [1, 2, 3]
    assert "recalibration failed" in (enc.last_error or "")
    # the first load was once logged "serving encoder version 1 (was None; ...)"
    assert "serving encoder version 1 (first version served;" in caplog.text
    assert "serving encoder version 3 (swapped from version 2;" in caplog.text and "was None" not in caplog.text


def test_provider_choice_falls_back_to_cpu_without_a_gpu() -> None:
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    assert resolve_providers("auto")[-1] == "CPUExecutionProvider"
