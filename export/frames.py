"""Turning robot frames into what an exported encoder takes, the same way at export and at serving.

Torch-free (numpy + OpenCV) so the runtime inside a policy needs no torch. The verifier and the
runtime both go through these functions, so the frames checked for parity are prepared exactly
like the frames served.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from agent.errors import ByolAgentError


class FrameFormatError(ByolAgentError, ValueError):
    """Frames handed to an encoder are not uint8 RGB images (N,H,W,3) or (H,W,3)."""


def as_frame_batch(frames: np.ndarray) -> np.ndarray:
    """Validate uint8 RGB frames and return them as an (N, H, W, 3) batch (a view when possible)."""
    if not isinstance(frames, np.ndarray):
        raise FrameFormatError(f"frames must be a numpy array, got {type(frames).__name__}")
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise FrameFormatError(f"frames must be (N,H,W,3) or (H,W,3) RGB, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise FrameFormatError(f"frames must be uint8, got {frames.dtype}")
    if frames.shape[0] == 0:
        raise FrameFormatError("frames batch is empty")
    return frames


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a uint8 (N,H,W,3) batch to the encoder's size; INTER_AREA keeps small features when shrinking."""
    if frames.shape[1:3] == (height, width):
        return np.ascontiguousarray(frames)
    out = np.empty((frames.shape[0], height, width, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        out[i] = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
    return out


def normalise_nchw(frames: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 NHWC RGB → float32 NCHW, x/255 then (x - mean)/std: the input of a `float_nchw` export."""
    scale = 1.0 / (255.0 * np.asarray(std, dtype=np.float32))
    shift = -np.asarray(mean, dtype=np.float32) / np.asarray(std, dtype=np.float32)
    out = frames.astype(np.float32) * scale + shift
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))
