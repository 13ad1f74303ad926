"""Frame preparation, the one owner: fit to the stored size, novelty gate, and the encoder's input.

Capture fits frames to the stored size before the wire (a small buffer, a fast socket); the novelty
gate keeps a robot that stands still from filling the buffer with copies of one view; and
`as_frame_batch` / `resize_frames` (with `agent.core.normalise.normalise_nchw`) turn frames into what an exported
encoder takes, used alike by export verification, evaluation and the runtime (via `InputSpec`), so the frames
checked for parity are prepared exactly like the frames served. Torch-free: numpy and OpenCV only.
"""

from __future__ import annotations

from typing import Literal, Optional

import cv2
import numpy as np

from agent.core.errors import ByolAgentError
from agent.core.normalise import to_unit_float


def fit_frame(image: np.ndarray, height: int, width: int, mode: Literal["crop", "stretch"] = "crop") -> np.ndarray:
    """Resize an HxWxC uint8 image (C = 3 or 1) to (height, width); `crop` first centre-crops to the target aspect.

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
    return _resize(image, height, width)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """INTER_AREA resize that keeps an HxWx1 image's channel axis (OpenCV drops it)."""
    out = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return out.reshape(height, width, -1) if image.ndim == 3 else out


def to_channels(frames: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (..., H, W, C) frames with `channels` channels: unchanged when C already fits; RGB -> gray with
    OpenCV's RGB2GRAY (ITU-R BT.601 luma 0.299 R + 0.587 G + 0.114 B, rounded), the one conversion used by
    mono capture, export verification and serving alike. Gray frames for an RGB encoder raise
    FrameFormatError: replicating them would serve the encoder colourless frames it never trained on.
    """
    have = frames.shape[-1]
    if have == channels:
        return frames
    if (have, channels) == (3, 1):
        flat = np.ascontiguousarray(frames).reshape(-1, frames.shape[-2], 3)
        return cv2.cvtColor(flat, cv2.COLOR_RGB2GRAY).reshape(*frames.shape[:-1], 1)
    kind = {1: "gray", 3: "RGB"}
    raise FrameFormatError(
        f"frames have {have} channel(s) ({kind.get(have, '?')}) but the encoder takes {channels} "
        f"({kind.get(channels, '?')}); only RGB frames convert to gray"
    )


def fit_frames(frames: np.ndarray, height: int, width: int, mode: Literal["crop", "stretch"] = "crop") -> np.ndarray:
    """`fit_frame` over a uint8 (N,H,W,C) batch; the batch itself when it already has that size."""
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack([fit_frame(frame, height, width, mode) for frame in frames])


LIVE_NOVELTY_THRESHOLD = 0.003
"""The gate's default for live sources. Measured by benchmarks/bench_novelty.py on 200 real photos at 96 px
(benchmarks/RESULTS.md): a still scene with Gaussian sensor noise of sigma 1/2/4 grey levels gives at most
0.0008/0.0015/0.0025, so 0.003 skips every still frame, while a camera panning slowly across a photo keeps
90 % (over 30 frames) and 57 % (over 90 frames) of its frames; the earlier 0.01 kept 51 % and 22 %."""


def novelty_threshold(configured: Optional[float], finite: bool) -> float:
    """The gate's threshold for one source: `capture.novelty_threshold` when set, else 0 (off) for a
    recording (`finite`: a file, folder or glob, whose every frame was wanted) and LIVE_NOVELTY_THRESHOLD
    for a live one (a camera standing still sends nothing new)."""
    if configured is not None:
        return configured
    return 0.0 if finite else LIVE_NOVELTY_THRESHOLD


class NoveltyGate:
    """Admits a frame only if it differs enough from the last admitted one.

    The comparison is the mean |difference| of 16x16 grayscale thumbnails in [0, 1]: cheap, and
    blind to sensor noise, so a still scene is skipped while slow motion accumulates until it passes.
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


def _thumbnail(image: np.ndarray, side: int) -> np.ndarray:
    gray = to_channels(image, 1)[..., 0] if image.ndim == 3 else image
    small = cv2.resize(gray, (side, side), interpolation=cv2.INTER_AREA)
    return to_unit_float(small)


class FrameFormatError(ByolAgentError, ValueError):
    """Frames handed to an encoder are not uint8 RGB or gray images (N,H,W,C) or (H,W,C), C = 3 or 1."""


def as_frame_batch(frames: np.ndarray) -> np.ndarray:
    """Validate uint8 RGB (C = 3) or gray (C = 1) frames and return them as an (N, H, W, C) batch (a view when
    possible)."""
    if not isinstance(frames, np.ndarray):
        raise FrameFormatError(f"frames must be a numpy array, got {type(frames).__name__}")
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3):
        raise FrameFormatError(
            f"frames must be (N,H,W,3) RGB or (N,H,W,1) gray, or one (H,W,C) frame; got shape {frames.shape}"
        )
    if frames.dtype != np.uint8:
        raise FrameFormatError(f"frames must be uint8, got {frames.dtype}")
    if frames.shape[0] == 0:
        raise FrameFormatError("frames batch is empty")
    return frames


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a uint8 (N,H,W,C) batch to the encoder's size; INTER_AREA keeps small features when shrinking."""
    if frames.shape[1:3] == (height, width):
        return np.ascontiguousarray(frames)
    out = np.empty((frames.shape[0], height, width, frames.shape[-1]), dtype=np.uint8)
    for i, frame in enumerate(frames):
        out[i] = _resize(frame, height, width)
    return out
