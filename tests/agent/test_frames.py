"""Capture-side image work: fit to the stored size, novelty gate, JPEG helpers."""

from __future__ import annotations

import struct
import zlib
from typing import Optional

import cv2
import numpy as np
import pytest

from agent.core.demo_scene import DemoScene
from agent.core.frames import NoveltyGate, fit_frame
from agent.core.image_codecs import decode_jpeg, encode_jpeg, read_image_bgr


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


def _png16(path, image: np.ndarray, sbit: Optional[int] = None) -> None:
    """Write a 16-bit PNG with OpenCV; with `sbit`, insert an sBIT chunk (PNG spec 11.3.3.4) after IHDR."""
    assert cv2.imwrite(str(path), image)
    if sbit is None:
        return
    data = path.read_bytes()
    channels = 1 if image.ndim == 2 else 3  # colour type 0 (grey) or 2 (RGB): one byte per channel
    body = b"sBIT" + bytes([sbit] * channels)
    chunk = struct.pack(">I", channels) + body + struct.pack(">I", zlib.crc32(body))
    ihdr_end = 8 + 8 + 13 + 4  # signature, IHDR length + type, IHDR data, CRC
    path.write_bytes(data[:ihdr_end] + chunk + data[ihdr_end:])


def _ramp12() -> np.ndarray:
    """A 16x16x3 uint16 image of 12-bit values 0..4095, stored unscaled (as many camera SDKs save them)."""
    ramp = np.linspace(0, 4095, 16 * 16).round().astype(np.uint16).reshape(16, 16)
    return np.repeat(ramp[..., None], 3, axis=2)


def test_12_bit_samples_marked_by_sbit_are_scaled_by_their_own_depth(tmp_path) -> None:
    path = tmp_path / "raw12.png"
    _png16(path, _ramp12(), sbit=12)
    image = read_image_bgr(str(path))
    assert image is not None and image.dtype == np.uint8 and image.shape == (16, 16, 3)
    want = np.round(_ramp12().astype(float) * 255 / 4095)
    assert np.abs(image.astype(float) - want).max() <= 1
    assert image.max() == 255


def test_a_spec_conforming_sbit_png_is_not_brightened(tmp_path) -> None:
    # PNG 1.2 section 9.1: an encoder scales 12-bit samples up to 16 bits; sBIT only records the 12
    scaled = np.round(_ramp12().astype(float) * 65535 / 4095).astype(np.uint16)
    path = tmp_path / "scaled12.png"
    _png16(path, scaled, sbit=12)
    image = read_image_bgr(str(path))
    want = np.round(_ramp12().astype(float) * 255 / 4095)
    assert np.abs(image.astype(float) - want).max() <= 1


def test_bit_depth_setting_scales_unmarked_16_bit_images(tmp_path) -> None:
    path = tmp_path / "plain.png"
    _png16(path, _ramp12())  # OpenCV writes no sBIT: nothing in the file says 12
    assert read_image_bgr(str(path)).max() <= 16  # auto: the container's 16 bits, as documented
    image = read_image_bgr(str(path), bit_depth=12)
    assert np.abs(image.astype(float) - np.round(_ramp12().astype(float) * 255 / 4095)).max() <= 1
    grey = tmp_path / "grey.png"
    _png16(grey, _ramp12()[..., 0] * 4)  # 14-bit grey
    assert read_image_bgr(str(grey), bit_depth=14).shape == (16, 16, 3)
    assert read_image_bgr(str(grey), bit_depth=14).max() == 255


def test_pgm_maxval_gives_the_depth(tmp_path) -> None:
    ramp = _ramp12()[..., 0]
    path = tmp_path / "raw12.pgm"
    path.write_bytes(b"P5\n# 12-bit\n16 16\n4095\n" + ramp.astype(">u2").tobytes())
    image = read_image_bgr(str(path))
    assert np.abs(image[..., 1].astype(float) - np.round(ramp.astype(float) * 255 / 4095)).max() <= 1


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
