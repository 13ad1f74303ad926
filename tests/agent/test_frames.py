"""Capture-side image work: fit to the stored size, novelty gate, JPEG helpers."""

from __future__ import annotations

import numpy as np
import pytest

from agent.core.demo_scene import DemoScene
from agent.core.frames import NoveltyGate, decode_jpeg, encode_jpeg, fit_frame


def test_fit_crop_keeps_the_centre_and_stretch_keeps_everything() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, :50] = 255  # a white band only at the far left: cropped away by a centre crop
    cropped = fit_frame(image, 50, 50, "crop")
    stretched = fit_frame(image, 50, 50, "stretch")
    assert cropped.shape == stretched.shape == (50, 50, 3)
    assert cropped.max() == 0
    assert stretched[:, :5].min() == 255


def test_fit_returns_same_size_untouched() -> None:
    image = np.ones((8, 9, 3), np.uint8)
    assert fit_frame(image, 8, 9) is image


def test_novelty_gate_drops_a_still_scene_and_admits_motion() -> None:
    scene = DemoScene(64, 64, seed=1)
    still = scene.render(0.0)
    gate = NoveltyGate(0.01)
    rng = np.random.default_rng(0)
    noisy = [np.clip(still.astype(int) + rng.integers(-2, 3, still.shape), 0, 255).astype(np.uint8) for _ in range(10)]
    assert [gate.admit(img) for img in [still, *noisy]] == [True] + [False] * 10
    assert gate.admit(scene.render(3.0))


def test_novelty_gate_off_admits_everything_and_validates() -> None:
    gate = NoveltyGate(0.0)
    image = np.zeros((16, 16, 3), np.uint8)
    assert all(gate.admit(image) for _ in range(3))
    with pytest.raises(ValueError):
        NoveltyGate(1.5)


def test_jpeg_helpers_keep_rgb_order() -> None:
    image = np.zeros((16, 16, 3), np.uint8)
    image[..., 0] = 200  # pure red
    out = decode_jpeg(encode_jpeg(image, 95))
    assert out is not None and out.shape == image.shape
    assert out[..., 0].mean() > 180 and out[..., 2].mean() < 20
    assert decode_jpeg(b"not a jpeg") is None
    assert decode_jpeg(b"") is None


def test_to_channels_converts_rgb_to_gray_as_opencv_and_refuses_gray_for_rgb() -> None:
    import cv2

    from agent.core.frames import FrameFormatError, fit_frames, resize_frames, to_channels

    rgb = np.random.default_rng(0).integers(0, 256, (3, 10, 14, 3), dtype=np.uint8)
    gray = to_channels(rgb, 1)
    assert gray.shape == (3, 10, 14, 1) and gray.dtype == np.uint8
    np.testing.assert_array_equal(gray[1, :, :, 0], cv2.cvtColor(rgb[1], cv2.COLOR_RGB2GRAY))
    assert to_channels(rgb, 3) is rgb
    assert resize_frames(gray, 5, 7).shape == (3, 5, 7, 1) and fit_frames(gray, 6, 6).shape == (3, 6, 6, 1)
    with pytest.raises(FrameFormatError, match="RGB"):
        to_channels(gray, 3)
