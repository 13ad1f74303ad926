"""A procedural scene, so that the whole pipeline runs on a machine with no camera.

Several object classes (shape × texture) move and spin over a textured background while the camera
pans and the lighting changes in level, direction and colour: enough variation for BYOL to learn
something, and the nuisances (illumination, viewpoint) its augmentations are meant to ignore.
A frame depends only on (seed, t), so runs are reproducible, and rendering is a handful of numpy /
OpenCV ops on small sprites (well under a millisecond at 96×96).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

SHAPES = ("disc", "square", "triangle", "ring", "cross", "hexagon")
TEXTURES = ("stripes", "checker", "dots", "radial", "solid_border", "noise")


@dataclass(frozen=True)
class _Sprite:
    rgb: np.ndarray  # s x s x 3 float32 in [0, 1]
    mask: np.ndarray  # s x s float32 in [0, 1]
    x0: float
    y0: float
    vx: float
    vy: float
    spin: float  # degrees per second
    depth: float  # parallax: how strongly camera motion moves this object


class DemoScene:
    """Renders frame `render(t)` of a scene fixed by `seed`, at height x width, as uint8 RGB."""

    def __init__(self, height: int, width: int, seed: int = 0, n_objects: int = 6) -> None:
        self.height, self.width = height, width
        rng = np.random.default_rng(seed)
        self._background = _background(rng, 2 * height, 2 * width)
        side = min(height, width)
        self._sprites = [_sprite(rng, i % len(SHAPES), side) for i in range(n_objects)]
        self._phase = rng.uniform(0, 2 * math.pi, size=4)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        self._u, self._v = xs / max(width - 1, 1) - 0.5, ys / max(height - 1, 1) - 0.5

    def render(self, t: float) -> np.ndarray:
        h, w = self.height, self.width
        p = self._phase
        cam_y = 0.5 * h * (1 + math.sin(0.23 * t + p[0]))
        cam_x = 0.5 * w * (1 + math.sin(0.31 * t + p[1]))
        oy, ox = int(cam_y), int(cam_x)
        canvas = self._background[oy : oy + h, ox : ox + w].copy()
        for sprite in self._sprites:
            _paste(canvas, sprite, t, cam_x, cam_y)
        level = 0.75 + 0.3 * math.sin(2 * math.pi * t / 9.0 + p[2])
        angle = 0.4 * t + p[3]
        light = level * (1.0 + 0.6 * (math.cos(angle) * self._u + math.sin(angle) * self._v))
        warmth = 0.12 * math.sin(2 * math.pi * t / 13.0)
        tint = np.array([1 + warmth, 1.0, 1 - warmth], dtype=np.float32)
        lit = canvas * light[..., None] * tint
        return np.clip(lit * 255.0, 0, 255).astype(np.uint8)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Soft colour blocks plus a few straight edges: a floor/wall-like texture the camera pans over."""
    blocks = rng.uniform(0.15, 0.6, size=(6, 8, 3)).astype(np.float32)
    bg = cv2.resize(blocks, (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(10):
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        colour = tuple(float(c) for c in rng.uniform(0.1, 0.8, size=3))
        cv2.line(bg, p1, p2, colour, thickness=max(1, min(h, w) // 60), lineType=cv2.LINE_AA)
    return np.clip(bg, 0, 1)


def _sprite(rng: np.random.Generator, shape_index: int, side: int) -> _Sprite:
    size = max(6, int(side * rng.uniform(0.2, 0.38)))
    texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    colours = rng.uniform(0.05, 1.0, size=(2, 3)).astype(np.float32)
    speed = side * rng.uniform(0.15, 0.5)
    heading = rng.uniform(0, 2 * math.pi)
    return _Sprite(
        rgb=_texture(rng, texture, size, colours),
        mask=_mask(SHAPES[shape_index], size),
        x0=float(rng.uniform(0, side)),
        y0=float(rng.uniform(0, side)),
        vx=speed * math.cos(heading),
        vy=speed * math.sin(heading),
        spin=float(rng.uniform(-90, 90)),
        depth=float(rng.uniform(0.3, 1.0)),
    )


def _mask(shape: str, s: int) -> np.ndarray:
    m = np.zeros((s, s), np.float32)
    c, r = (s - 1) / 2, s / 2 - 1
    ci = (int(round(c)), int(round(c)))
    if shape == "disc":
        cv2.circle(m, ci, int(r), 1.0, -1, cv2.LINE_AA)
    elif shape == "square":
        q = int(r * 0.75)
        cv2.rectangle(m, (ci[0] - q, ci[1] - q), (ci[0] + q, ci[1] + q), 1.0, -1)
    elif shape == "triangle":
        pts = np.array([[c, c - r], [c - r * 0.87, c + r * 0.5], [c + r * 0.87, c + r * 0.5]], np.int32)
        cv2.fillPoly(m, [pts], 1.0, cv2.LINE_AA)
    elif shape == "ring":
        cv2.circle(m, ci, int(r * 0.8), 1.0, max(2, s // 6), cv2.LINE_AA)
    elif shape == "cross":
        b = max(1, s // 6)
        m[ci[1] - b : ci[1] + b + 1, 1:-1] = 1.0
        m[1:-1, ci[0] - b : ci[0] + b + 1] = 1.0
    else:
        angles = np.arange(6) * math.pi / 3
        pts = np.stack([c + r * np.cos(angles), c + r * np.sin(angles)], axis=1).astype(np.int32)
        cv2.fillPoly(m, [pts], 1.0, cv2.LINE_AA)
    return m


def _texture(rng: np.random.Generator, kind: str, s: int, colours: np.ndarray) -> np.ndarray:
    ys, xs = np.mgrid[0:s, 0:s].astype(np.float32) / s
    if kind == "stripes":
        theta, freq = rng.uniform(0, math.pi), rng.uniform(3, 6)
        pick = np.sin(2 * math.pi * freq * (xs * math.cos(theta) + ys * math.sin(theta))) > 0
    elif kind == "checker":
        n = int(rng.integers(3, 6))
        pick = ((xs * n).astype(int) + (ys * n).astype(int)) % 2 == 0
    elif kind == "dots":
        spacing = rng.uniform(3, 5)
        pick = ((xs * spacing) % 1 - 0.5) ** 2 + ((ys * spacing) % 1 - 0.5) ** 2 < 0.08
    elif kind == "radial":
        weight = np.clip(np.hypot(xs - 0.5, ys - 0.5) * 2, 0, 1)[..., None]
        return colours[0] * (1 - weight) + colours[1] * weight
    elif kind == "solid_border":
        edge = np.minimum(np.minimum(xs, 1 - xs), np.minimum(ys, 1 - ys))
        pick = edge > 0.18
    else:
        blob = cv2.resize(rng.uniform(0, 1, (4, 4)).astype(np.float32), (s, s), interpolation=cv2.INTER_CUBIC)
        pick = blob > 0.5
    return np.where(pick[..., None], colours[0], colours[1]).astype(np.float32)


def _bounce(x: float, span: float) -> float:
    """Reflect x into [0, span]: objects bounce off the frame edges."""
    if span <= 0:
        return 0.0
    x = x % (2 * span)
    return x if x <= span else 2 * span - x


def _paste(canvas: np.ndarray, sprite: _Sprite, t: float, cam_x: float, cam_y: float) -> None:
    h, w = canvas.shape[:2]
    s = sprite.mask.shape[0]
    x = int(_bounce(sprite.x0 + sprite.vx * t - sprite.depth * cam_x, w - s))
    y = int(_bounce(sprite.y0 + sprite.vy * t - sprite.depth * cam_y, h - s))
    rot = cv2.getRotationMatrix2D(((s - 1) / 2, (s - 1) / 2), sprite.spin * t, 1.0)
    rgb = cv2.warpAffine(sprite.rgb, rot, (s, s), flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(sprite.mask, rot, (s, s), flags=cv2.INTER_LINEAR)[..., None]
    region = canvas[y : y + s, x : x + s]
    region[:] = region * (1 - alpha) + rgb * alpha
