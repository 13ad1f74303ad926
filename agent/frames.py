"""Per-frame image work done on the capture side: fit to the stored size, novelty gate, JPEG.

Shrinking before the wire keeps the trainer's buffer small and the socket fast; the novelty gate
keeps a robot that stands still from filling the buffer with copies of one view.
"""

from __future__ import annotations

from typing import Literal, Optional

import cv2
import numpy as np


def fit_frame(image: np.ndarray, height: int, width: int, mode: Literal["crop", "stretch"] = "crop") -> np.ndarray:
    """Resize an HxWx3 uint8 image to (height, width); `crop` first centre-crops to the target aspect.

    INTER_AREA averages source pixels, so downscaling does not alias fine texture into noise.
    """
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    if mode == "crop":
        scale = min(h / height, w / width)
        crop_h, crop_w = min(h, round(height * scale)), min(w, round(width * scale))
        top, left = (h - crop_h) // 2, (w - crop_w) // 2
        image = image[top : top + crop_h, left : left + crop_w]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


class NoveltyGate:
    """Admits a frame only if it differs enough from the last admitted one.

    The comparison is the mean |difference| of 16x16 grayscale thumbnails in [0, 1]: cheap, and
    blind to sensor noise, so a still scene is skipped while any real motion passes.
    """

    THUMB = 16

    def __init__(self, threshold: float) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"novelty threshold must be in [0, 1], got {threshold}")
        self.threshold = threshold
        self._last: Optional[np.ndarray] = None

    def admit(self, image: np.ndarray) -> bool:
        """True if `image` should be kept (and becomes the new reference)."""
        if self.threshold == 0.0:
            return True
        thumb = _thumbnail(image, self.THUMB)
        if self._last is not None and float(np.mean(np.abs(thumb - self._last))) < self.threshold:
            return False
        self._last = thumb
        return True

    def reset(self) -> None:
        """Forget the reference, e.g. after a source was reopened and the view may have jumped."""
        self._last = None


def _thumbnail(image: np.ndarray, side: int) -> np.ndarray:
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    small = cv2.resize(gray, (side, side), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) / 255.0


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """RGB uint8 → JPEG bytes (OpenCV works in BGR, so the channels are swapped on the way)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"JPEG encoding failed for an image of shape {image.shape}")
    return buf.tobytes()


def decode_jpeg(data: bytes | memoryview) -> Optional[np.ndarray]:
    """JPEG bytes → RGB uint8 HxWx3, or None if the bytes are not a decodable image."""
    arr = np.frombuffer(data, dtype=np.uint8)
    if arr.size == 0:
        return None
    bgr = cv2.imdecode(arr, cv2.IMREAD_COLOR)
    if bgr is None:
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def bgr_to_rgb(image: np.ndarray) -> np.ndarray:
    """OpenCV's BGR / BGRA / grayscale output → contiguous RGB uint8 HxWx3."""
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
