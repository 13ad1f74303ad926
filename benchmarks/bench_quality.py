"""Quality under a fixed CPU budget: our BYOL vs byol-pytorch 0.9.1 vs the random-init encoder.

Both learners start from the same seeded ResNet-18 (which is also the random-init reference),
read the same stream of unlabelled frames in the same order, run with the same thread count, and
train until each has used the same CPU time. The budget is process CPU seconds (all threads), not
wall time, so other jobs on a shared machine change how long the run takes but not what each
learner gets; training is interleaved in slices (ours, theirs, ours, ...) so that slow periods
hit both alike. Afterwards each frozen encoder is scored by weighted cosine kNN (k = 20) and a
linear probe on a held-out labelled set, exactly as `byol-agent eval` does.

The frames are procedural and labelled, like a robot seeing the same few objects again and
again: 10 objects, each a fixed shape (disc, ring, square, frame, triangle, star, cross,
crescent) with a fixed two-colour pattern (stripes, plain, checker), seen at a random position,
size and rotation, under random brightness and colour tint, over a background. By default the
background is one of 4 fixed places (two-colour textures: stripes, checker, blobs, gradient)
seen through a random window, as a robot moves around the same rooms; `--places 0` gives every
frame a background of its own instead. That variant is much harder for any instance-level
self-supervised method: a unique background identifies a frame better than any of 10 objects
can, so the learner spends its capacity on backgrounds, which kNN on object labels punishes.
The label is the object; background, pose and lighting are nuisances. The stream and the
labelled set come from different seeds, so no labelled frame is ever trained on. (CIFAR and the
like cannot be downloaded here and torchvision ships no data; sklearn's digits are too easy:
random init already scores ~0.95.) Both learners are scored after every slice, outside their
CPU clocks, so the output is accuracy as a function of budget.

Two references: the random-init encoder as exported (its BatchNorm layers still hold their
initial running statistics, mean 0 / var 1, so they pass features through unnormalised), and
the same encoder with BatchNorm statistics re-estimated on stream frames (no weight changes),
which isolates what BN statistics alone do to the probes.

    python benchmarks/bench_quality.py                          # 600 CPU s per learner, 4 places
    python benchmarks/bench_quality.py --places 0               # a background per frame
    python benchmarks/bench_quality.py --their-views ours       # byol-pytorch with our views
    python benchmarks/bench_quality.py --budget 60 train.lr=1e-3 augment.hue=0.1
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import Config, load_config  # noqa: E402
from trainer.backbone import Backbone  # noqa: E402
from trainer.augment import View  # noqa: E402
from trainer.build import build_learner, build_optimizer, view_specs  # noqa: E402
from trainer.encoders import create_encoder  # noqa: E402
from trainer.evaluation import knn_top1, linear_probe_top1, stratified_split, torch_features  # noqa: E402

SHAPES = ("disc", "ring", "square", "frame", "triangle", "star", "cross", "crescent")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BENCH_DEFAULTS = ["model.image_size=32"]


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
        (i % len(SHAPES), look.uniform(0, 1, 3).astype(np.float32), look.uniform(0, 1, 3).astype(np.float32),
         i % 3, look.uniform(2, 5))
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


# --------------------------------------------------------------------------- learners


@dataclass
class Trainee:
    """One learner being trained from the stream: its step function, its clock and its cursor."""

    name: str
    step: Callable[[torch.Tensor], float]
    batch_size: int
    cpu_s: float = 0.0
    wall_s: float = 0.0
    steps: int = 0
    cursor: int = 0
    last_loss: float = float("nan")

    def train_slice(self, stream: np.ndarray, cpu_budget_s: float) -> None:
        """Train until this learner's CPU time reaches `cpu_budget_s` (the last step may overshoot)."""
        while self.cpu_s < cpu_budget_s:
            idx = (self.cursor + np.arange(self.batch_size)) % len(stream)
            self.cursor = int(idx[-1] + 1) % len(stream)
            cpu0, wall0 = time.process_time(), time.perf_counter()
            batch = torch.from_numpy(stream[idx]).permute(0, 3, 1, 2).float().div_(255.0)
            self.last_loss = self.step(batch)
            self.cpu_s += time.process_time() - cpu0
            self.wall_s += time.perf_counter() - wall0
            self.steps += 1


def ours(cfg: Config) -> tuple[Trainee, Callable[[str], nn.Module]]:
    learner = build_learner(cfg.model, cfg.train, "cpu", cfg.augment)
    optimizer = build_optimizer(learner, cfg.train)

    def step(batch: torch.Tensor) -> float:
        loss = learner(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        learner.update_moving_average()
        return loss.detach().item()

    return Trainee("ours", step, cfg.train.batch_size), learner.encoder_module


def byol_pytorch(cfg: Config, views: str) -> tuple[Trainee, nn.Module]:
    """byol-pytorch 0.9.1 as its README uses it (default heads, Adam 3e-4), with its own default
    views or (`views="ours"`) given our configured views through its `augment_fn` / `augment_fn2`."""
    from byol_pytorch import BYOL as TheirBYOL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)  # the same initial weights as ours and the reference
        net = create_encoder(cfg.model.encoder, **cfg.model.encoder_kwargs)
    augment: dict[str, View] = {}
    if views == "ours":
        generator = torch.Generator().manual_seed(cfg.train.seed)
        one, two = view_specs(cfg.augment)
        size = cfg.model.image_size
        augment = {"augment_fn": View(size, one, IMAGENET_MEAN, IMAGENET_STD, generator),
                   "augment_fn2": View(size, two, IMAGENET_MEAN, IMAGENET_STD, generator)}
    learner = TheirBYOL(net, image_size=cfg.model.image_size, hidden_layer=cfg.model.hidden_layer, **augment)
    optimizer = torch.optim.Adam(learner.parameters(), lr=3e-4)

    def step(batch: torch.Tensor) -> float:
        loss = learner(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        learner.update_moving_average()
        return loss.detach().item()

    return Trainee("byol-pytorch", step, cfg.train.batch_size), net


def random_init(cfg: Config) -> nn.Module:
    """The seeded encoder both learners start from, cut at the hidden layer (`byol-agent eval`'s reference)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        return Backbone(create_encoder(cfg.model.encoder, **cfg.model.encoder_kwargs), cfg.model.hidden_layer)


@torch.no_grad()
def restat_batchnorm(module: nn.Module, frames: np.ndarray, batch_size: int = 100) -> nn.Module:
    """BatchNorm running statistics recomputed (cumulative average) on `frames`; weights untouched."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
    module.train()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    for start in range(0, len(frames), batch_size):
        batch = torch.from_numpy(frames[start : start + batch_size]).permute(0, 3, 1, 2).float() / 255.0
        module((batch - mean) / std)
    return module.eval()


# --------------------------------------------------------------------------- run


def scores(module: nn.Module, images: np.ndarray, labels: np.ndarray, split: tuple, k: int) -> tuple[float, float]:
    """(kNN top-1, linear top-1) of a frozen encoder, as `byol-agent eval` computes them."""
    feats = torch_features(module, images, IMAGENET_MEAN, IMAGENET_STD)
    train, test = split
    return (
        knn_top1(feats[train], labels[train], feats[test], labels[test], k=k),
        linear_probe_top1(feats[train], labels[train], feats[test], labels[test]),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=600.0, help="CPU seconds (all threads) per learner")
    parser.add_argument("--slices", type=int, default=6, help="interleaved training slices per learner")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stream-frames", type=int, default=20000, help="distinct frames in the stream (wraps)")
    parser.add_argument("--eval-images", type=int, default=2000)
    parser.add_argument("--places", type=int, default=4,
                        help="0: a new random background per frame; N: N fixed places seen through random windows")
    parser.add_argument("--their-views", choices=("default", "ours"), default="default",
                        help="byol-pytorch's views: its defaults, or ours (cfg.augment) passed as augment_fn")
    parser.add_argument("--config", default=None, help="our learner's YAML config (default configs/default.yaml)")
    parser.add_argument("overrides", nargs="*", help=f"our config overrides (applied after {BENCH_DEFAULTS})")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, BENCH_DEFAULTS + list(args.overrides))
    size, k = cfg.model.image_size, cfg.eval.k
    print(f"encoder {cfg.model.encoder} at {size}px, hidden layer {cfg.model.hidden_layer!r}, threads {args.threads}, "
          f"batch {cfg.train.batch_size}, budget {args.budget:g} CPU s per learner in {args.slices} slices")
    print(f"views: {cfg.augment.model_dump()}; byol-pytorch uses {args.their_views} views")
    print(f"ours: optimizer {cfg.train.optimizer} lr {cfg.train.lr:g}, projector {cfg.model.projection_hidden_size}"
          f"->{cfg.model.projection_size}, tau {cfg.train.tau_schedule} {cfg.train.tau_base}->{cfg.train.tau_final}"
          f"; overrides {BENCH_DEFAULTS + list(args.overrides)}")

    t0 = time.perf_counter()
    stream, _ = render_objects(args.stream_frames, size, seed=cfg.train.seed + 1, places=args.places)  # labels unused
    images, labels = render_objects(args.eval_images, size, seed=cfg.train.seed + 2, places=args.places)
    split = stratified_split(labels, cfg.eval.test_fraction, seed=0)
    classes = len(np.unique(labels))
    print(f"data: {len(stream)} stream frames, {len(split[0])}/{len(split[1])} labelled train/test, "
          f"{classes} objects (chance {1 / classes:.3f}), places {args.places or 'one per frame'}; generated in {time.perf_counter() - t0:.1f} s", flush=True)

    rows: dict[str, tuple[Trainee | None, tuple[float, float]]] = {
        "random init": (None, scores(random_init(cfg), images, labels, split, k)),
        "random, BN restat": (None, scores(restat_batchnorm(random_init(cfg), stream[:2000]), images, labels, split, k)),
    }
    our_trainee, our_encoder = ours(cfg)
    their_trainee, their_net = byol_pytorch(cfg, args.their_views)
    their_encoder = Backbone(their_net, cfg.model.hidden_layer)
    for s in range(1, args.slices + 1):
        for trainee in (our_trainee, their_trainee):
            trainee.train_slice(stream, args.budget * s / args.slices)
        # scored between slices, outside the CPU clocks: accuracy as a function of budget
        ours_now = scores(our_encoder("target"), images, labels, split, k)
        theirs_now = scores(their_encoder, images, labels, split, k)
        print(f"  slice {s}/{args.slices} ({args.budget * s / args.slices:g} CPU s): "
              f"ours {our_trainee.steps} steps loss {our_trainee.last_loss:.3f} kNN/linear {ours_now[0]:.3f}/{ours_now[1]:.3f}; "
              f"byol-pytorch {their_trainee.steps} steps loss {their_trainee.last_loss:.3f} "
              f"kNN/linear {theirs_now[0]:.3f}/{theirs_now[1]:.3f}", flush=True)
    rows["ours (online)"] = (our_trainee, scores(our_encoder("online"), images, labels, split, k))
    rows["ours (target)"] = (our_trainee, ours_now)
    rows["byol-pytorch"] = (their_trainee, theirs_now)

    print(f"\n{'encoder':18s}{'steps':>7s}{'images':>8s}{'CPU s':>8s}{'wall s':>8s}{'img/CPU s':>10s}{'kNN':>8s}{'linear':>8s}")
    for name, (trainee, (knn, linear)) in rows.items():
        if trainee is None:
            print(f"{name:18s}{'-':>7s}{'-':>8s}{'-':>8s}{'-':>8s}{'-':>10s}{knn:8.3f}{linear:8.3f}")
            continue
        seen = trainee.steps * trainee.batch_size
        print(f"{name:18s}{trainee.steps:7d}{seen:8d}{trainee.cpu_s:8.1f}{trainee.wall_s:8.1f}"
              f"{seen / trainee.cpu_s:10.1f}{knn:8.3f}{linear:8.3f}")
    (ours_knn, ours_linear), (rand_knn, rand_linear) = rows["ours (target)"][1], rows["random init"][1]
    their_knn, their_linear = rows["byol-pytorch"][1]
    print(f"\nours (target) minus random init: kNN {ours_knn - rand_knn:+.3f}, linear {ours_linear - rand_linear:+.3f}; "
          f"minus byol-pytorch: kNN {ours_knn - their_knn:+.3f}, linear {ours_linear - their_linear:+.3f}; "
          f"total wall {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
