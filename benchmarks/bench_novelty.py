"""What the novelty gate's threshold keeps and drops: still scenes with sensor noise vs slow camera motion.

The gate (`agent.core.frames.NoveltyGate`) compares 16x16 grayscale thumbnails of consecutive kept
frames by mean |difference| in [0, 1]. A threshold must sit above what a still camera's noise gives
and below what slow, steady camera motion gives, or it silently throws real data away (a
threshold of 0.01 kept 45 of 120 frames of a real clip). No real footage ships with any installed package, so
this measures on the development photos (real images) two ways, at the capture's default 96 px:
- still: one photo, upscaled, with Gaussian sensor noise of sigma 1, 2 and 4 grey levels per frame;
- slow motion: the photo filmed by a camera panning/zooming across it over N frames
  (`make_pan_video.pan_frames`), N = 30 (one photo per 2 s at 15 fps) and 90 (6 s).
Prints percentiles of the consecutive-frame statistic for each, and the share of motion frames a
threshold would drop.

    python benchmarks/bench_novelty.py --data /tmp/c10/cifar10-dev/train --photos 200
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.core.frames import NoveltyGate, _thumbnail  # noqa: E402
from agent.core.image_codecs import read_image_bgr  # noqa: E402
from benchmarks.make_pan_video import pan_frames  # noqa: E402

SIDE = 96


def consecutive_diffs(frames: list[np.ndarray]) -> list[float]:
    thumbs = [_thumbnail(f, 16) for f in frames]
    return [float(np.mean(np.abs(a - b))) for a, b in zip(thumbs, thumbs[1:])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a folder of real photos (read recursively)")
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    files = sorted(str(p) for p in Path(args.data).rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    chosen = [files[i] for i in rng.choice(len(files), min(args.photos, len(files)), replace=False)]
    photos = [cv2.resize(read_image_bgr(f), (SIDE, SIDE), interpolation=cv2.INTER_CUBIC) for f in chosen]
    still = {
        sigma: [[np.clip(p + rng.normal(0, sigma, p.shape), 0, 255).astype(np.uint8) for _ in range(8)] for p in photos]
        for sigma in (1.0, 2.0, 4.0)
    }
    pans = {n: [pan_frames(p, n, SIDE, rng) for p in photos] for n in (30, 90)}
    cases = {
        **{f"still, noise sigma {k:g}": v for k, v in still.items()},
        **{f"pan over {k} frames": v for k, v in pans.items()},
    }
    print(
        f"{len(photos)} real photos from {args.data} at {SIDE} px; mean |diff| of 16x16 thumbnails, consecutive frames"
    )
    print(f"{'case':28s} {'p5':>8s} {'p50':>8s} {'p95':>8s} {'max':>8s}")
    for name, sequences in cases.items():
        d = np.array([x for seq in sequences for x in consecutive_diffs(seq)])
        print(
            f"{name:28s} {np.percentile(d, 5):8.4f} {np.percentile(d, 50):8.4f} {np.percentile(d, 95):8.4f} "
            f"{d.max():8.4f}"
        )
    print("\nframes the gate keeps (after each sequence's first), by threshold:")
    print(f"{'threshold':>10s} " + " ".join(f"{name:>22s}" for name in cases))
    for threshold in (0.001, 0.002, 0.003, 0.005, 0.01):
        shares = []
        for sequences in cases.values():
            kept = total = 0
            for seq in sequences:
                gate = NoveltyGate(threshold)
                kept += sum(gate.admit(frame) for frame in seq) - 1
                total += len(seq) - 1
            shares.append(kept / total)
        print(f"{threshold:10.3f} " + " ".join(f"{share:22.0%}" for share in shares))
    return 0


if __name__ == "__main__":
    sys.exit(main())
