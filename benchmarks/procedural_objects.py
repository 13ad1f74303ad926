"""Procedural labelled objects: the quality benchmark's synthetic stream (`bench_quality.py --data procedural`).

10 objects, each a fixed shape (disc, ring, square, frame, triangle, star, cross, crescent) with a
fixed two-colour pattern (stripes, plain, checker), seen at a random position, size and rotation,
under random brightness and colour tint, over a background: one of 4 fixed places (two-colour
textures) seen through a random window, as a robot moves around the same rooms, or (`places=0`) a
background of its own per frame. The label is the object. Here colour alone nearly identifies an
object, which is why this stream is kept only as a second opinion: the first is real photos.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

SHAPES = ("disc", "ring", "square", "frame", "triangle", "star", "cross", "crescent")


# --------------------------------------------------------------------------- data


def _polygon(corners: int, radius: float, angle: float, inner: float = 0.0) -> np.ndarray:
    """Regular polygon (or star, when `inner` > 0) centred on the origin."""
    steps = 2 * corners if inner else corners
    radii = [radius if not inner or i % 2 == 0 else radius * inner for i in range(steps)]
    angles = [angle + 2 * math.pi * i / steps for i in range(steps)]
    return np.array([(r * math.cos(a), r * math.sin(a)) for r, a in zip(radii, angles)])


def _shape_mask(shape: int, side: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    mask = np.zeros((side, side), np.uint8)
    centre = np.array([cx, cy])

    def poly(points: np.ndarray, value: int = 255) -> None:
        cv2.fillPoly(mask, [np.round((points + centre) * 16).astype(np.int32)], value, shift=4)

    c = (round(cx), round(cy))
    if shape in (0, 1, 7):  # disc, ring, crescent
        cv2.circle(mask, c, round(r), 255, -1)
        if shape == 1:
            cv2.circle(mask, c, round(0.55 * r), 0, -1)
        if shape == 7:
            bite = (round(cx + 0.45 * r * math.cos(angle)), round(cy + 0.45 * r * math.sin(angle)))
            cv2.circle(mask, bite, round(0.85 * r), 0, -1)
    elif shape in (2, 3):  # square, frame
        poly(_polygon(4, 1.2 * r, angle))
        if shape == 3:
            poly(_polygon(4, 0.7 * r, angle), 0)
    elif shape == 4:
        poly(_polygon(3, 1.2 * r, angle))
    elif shape == 5:
        poly(_polygon(5, 1.2 * r, angle, inner=0.45))
    else:  # cross
        w = 0.35 * r
        bar = np.array([[-r, -w], [r, -w], [r, w], [-r, w]])
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        poly(bar @ rot.T)
        poly(bar @ rot.T @ np.array([[0.0, 1.0], [-1.0, 0.0]]))
    return mask


def _texture(rng: np.random.Generator, side: int) -> np.ndarray:
    """Background: two random colours mixed by stripes, a checker, smooth blobs or a gradient (float RGB in [0, 1])."""
    a, b = rng.uniform(0, 1, size=(2, 3)).astype(np.float32)
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32) / side
    kind = rng.integers(4)
    if kind == 0:
        theta, freq = rng.uniform(0, math.pi), rng.uniform(2, 8)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * freq * (xs * math.cos(theta) + ys * math.sin(theta)))
    elif kind == 1:
        n = rng.integers(2, 7)
        t = ((np.floor(xs * n) + np.floor(ys * n)) % 2).astype(np.float32)
    elif kind == 2:
        t = cv2.resize(rng.uniform(0, 1, (4, 4)).astype(np.float32), (side, side), interpolation=cv2.INTER_CUBIC)
    else:
        theta = rng.uniform(0, 2 * math.pi)
        t = xs * math.cos(theta) + ys * math.sin(theta)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    t = np.clip(t, 0, 1)[..., None]
    return a * (1 - t) + b * t


def _object_pattern(kind: int, a: np.ndarray, b: np.ndarray, freq: float, side: int, angle: float) -> np.ndarray:
    """An object's own surface: stripes along its orientation, plain colour, or a checker."""
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32) / side
    if kind == 0:
        t = (np.sin(2 * math.pi * freq * (xs * math.cos(angle) + ys * math.sin(angle))) > 0).astype(np.float32)
    elif kind == 1:
        t = np.zeros_like(xs)
    else:
        t = ((np.floor(xs * freq) + np.floor(ys * freq)) % 2).astype(np.float32)
    return a * (1 - t[..., None]) + b * t[..., None]


def render_objects(n: int, size: int, seed: int, n_objects: int = 10, places: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` labelled uint8 RGB frames (size x size), drawn at 4x and area-downsampled (anti-aliased).

    The objects themselves are fixed (seed 12345) whatever `seed` is; `seed` draws the views.
    `places` = 0: every frame has a background of its own. `places` > 0: that many fixed places
    (also seed 12345), each a texture twice the frame's side; a frame shows one of them through a
    random window, as a robot sees the same few rooms from different spots.
    """
    look = np.random.default_rng(12345)
    objects = [
        (
            i % len(SHAPES),
            look.uniform(0, 1, 3).astype(np.float32),
            look.uniform(0, 1, 3).astype(np.float32),
            i % 3,
            look.uniform(2, 5),
        )
        for i in range(n_objects)
    ]
    side = 4 * size
    rooms = [_texture(look, 2 * side) for _ in range(places)]
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    labels = rng.integers(n_objects, size=n)
    for i in range(n):
        shape, a, b, kind, freq = objects[labels[i]]
        if rooms:
            x0, y0 = rng.integers(0, side + 1, size=2)
            background = rooms[rng.integers(len(rooms))][y0 : y0 + side, x0 : x0 + side]
        else:
            background = _texture(rng, side)
        background = background.mean() + 0.5 * (background - background.mean())  # busy, but below the object
        r = rng.uniform(0.25, 0.4) * side
        cx, cy = rng.uniform(r, side - r, size=2)
        angle = rng.uniform(0, 2 * math.pi)
        alpha = _shape_mask(shape, side, cx, cy, r, angle).astype(np.float32)[..., None] / 255.0
        frame = background * (1 - alpha) + _object_pattern(kind, a, b, freq, side, angle) * alpha
        light = rng.uniform(0.6, 1.3) * rng.uniform(0.85, 1.15, 3).astype(np.float32)
        frame = np.clip(frame * light * 255.0, 0, 255).astype(np.uint8)
        images[i] = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
    return images, labels.astype(np.int64)


def write_folders(root: Path, n_train: int, n_test: int, size: int, seed: int, places: int = 4) -> Path:
    """`root/train/<object>/*.png` and `root/test/<object>/*.png` from two seeds; returns `root`."""
    for half, n, offset in (("train", n_train, 1), ("test", n_test, 2)):
        images, labels = render_objects(n, size, seed=seed + offset, places=places)
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = root / half / f"object{label:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"{i:05d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return root
