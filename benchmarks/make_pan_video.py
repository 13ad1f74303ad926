"""A real-photo video for the continual benchmarks: each photo filmed by a slowly panning, zooming camera.

Temporal positives (`buffer.temporal_positives`) pair two frames of one camera about
`buffer.temporal_delta_s` apart; they need video in which neighbouring frames show the same thing
from a slightly different view. No real clip with labels ships with any installed package, so this
films the development photos: each photo (in the folder's sorted order, so class after class, as
a robot moving from room to room sees the world) is held for `--frames` frames while a virtual
camera pans from one random window of it to another and zooms between 60 % and 100 % of it.
Written with OpenCV (MJPG in .avi, which every OpenCV build reads).

    python benchmarks/make_pan_video.py DATA/train pan.avi --frames 8 --size 64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.core.config import CaptureConfig  # noqa: E402
from agent.core.errors import SourceError  # noqa: E402
from agent.robot.sources import SourceExhausted, open_source  # noqa: E402


def pan_frames(photo: np.ndarray, n: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`n` frames (size x size, BGR) moving linearly from one random window of `photo` to another."""
    h, w = photo.shape[:2]
    (z0, z1), ends = rng.uniform(0.6, 1.0, 2), rng.uniform(0, 1, (2, 2))
    frames = []
    for t in np.linspace(0.0, 1.0, n):
        side = (z0 + (z1 - z0) * t) * min(h, w)
        fx, fy = ends[0] + (ends[1] - ends[0]) * t
        x0, y0 = fx * (w - side), fy * (h - side)
        scale = size / side
        m = np.array([[scale, 0, -x0 * scale], [0, scale, -y0 * scale]], np.float32)
        frames.append(cv2.warpAffine(photo, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    return frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="image folder, read recursively in sorted order")
    parser.add_argument("out", help="output .avi")
    parser.add_argument("--frames", type=int, default=8, help="frames per photo")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels")
    parser.add_argument("--fps", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    source = open_source(
        args.folder, CaptureConfig()
    )  # the capture's own folder reader: sorted, unreadable files skipped
    try:
        source.connect()
    except SourceError as exc:
        print(f"make_pan_video: {exc}", file=sys.stderr)
        return 2
    writer = cv2.VideoWriter(args.out, cv2.VideoWriter_fourcc(*"MJPG"), args.fps, (args.size, args.size))
    if not writer.isOpened():
        print(f"make_pan_video: OpenCV cannot write {args.out}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    photos = 0
    try:
        while True:
            photo = cv2.cvtColor(source.read(), cv2.COLOR_RGB2BGR)
            for frame in pan_frames(photo, args.frames, args.size, rng):
                writer.write(frame)
            photos += 1
    except SourceExhausted:
        pass
    writer.release()
    print(f"wrote {photos * args.frames} frames of {photos} photos to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
