"""Learner step throughput: ours vs byol-pytorch 0.9.1 vs the encoder floor, interleaved in one process.

    python benchmarks/bench_learner.py                  # CPU: ResNet-18, 64x64, batch 64, Adam
    python benchmarks/bench_learner.py --quick          # fewer rounds, a couple of minutes
    python benchmarks/bench_learner.py --device cuda --arch resnet50 --size 224 --batch 256

Candidates, each timed for --steps steps per round, rounds interleaved (the machine may be shared):
  ours     trainer.BYOL step: per-image views (both), online fwd+bwd, target fwd, Adam, EMA
  peer     byol_pytorch.BYOL step with its defaults (its own augmentation) on a plain net, as its
           README runs it; same Adam
  peer_cl  the same, but handed the channels_last net ours gets (for information)
  floor    the same encoder as ours (cut at the same hidden layer, same memory format, threads and
           precision) on two pre-made views: online fwd+bwd, target fwd (no_grad), Adam step; run
           with the views separate and concatenated, the faster one (by median) is the floor
  floor_nchw  the concatenated floor on a plain (NCHW) net: byol-pytorch's own floor (for information)
It also times the two views alone, ours vs the equivalent kornia pipeline (ms per batch).
Without the `bench` extra (byol-pytorch, kornia) those candidates are left out, with one line saying so.
Ratios are reported two ways: ratio of the median img/s, and the median over rounds of the
per-round ratio (candidates of one round share the machine's load at that moment).
On CUDA everything runs under bf16 autocast, channels_last, with the images already on the GPU.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer import BYOL  # noqa: E402
from trainer.augment import (  # noqa: E402
    VIEW1,
    VIEW2,
    View,
    blur_kernel_size,
)
from trainer.backbone import Backbone  # noqa: E402
from trainer.normalise import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1, help="timed steps per candidate per round")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--quick", action="store_true", help="1 step x 5 rounds")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for every candidate on the CPU too")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--no-channels-last", action="store_true", help="NCHW encoders (default: channels_last)")
    return parser.parse_args()


def adam(params) -> torch.optim.Optimizer:
    """The same Adam for every candidate: lr 3e-4, fused kernels (fastest on CPU and CUDA)."""
    return torch.optim.Adam(params, lr=3e-4, fused=True)


def make_net(arch: str, device: torch.device, channels_last: bool) -> nn.Module:
    net = torchvision.models.get_model(arch, weights=None).to(device)
    return net.to(memory_format=torch.channels_last) if channels_last else net


def learner_step(learner: torch.nn.Module, opt: torch.optim.Optimizer, images: Tensor) -> Callable[[], None]:
    """One BYOL training step as a user writes it (both libraries share the same call pattern)."""

    def step() -> None:
        loss = learner(images)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        learner.update_moving_average()

    return step


def ours(args: argparse.Namespace, device: torch.device, images: Tensor) -> Callable[[], None]:
    learner = BYOL(make_net(args.arch, device, not args.no_channels_last), args.size, hidden_layer="avgpool")
    opt = adam(learner.parameters())

    return learner_step(learner, opt, images)


def peer(args: argparse.Namespace, device: torch.device, images: Tensor, channels_last: bool) -> Callable[[], None]:
    from byol_pytorch import BYOL as PeerBYOL

    learner = PeerBYOL(make_net(args.arch, device, channels_last), args.size, hidden_layer="avgpool")
    opt = adam(learner.parameters())

    return learner_step(learner, opt, images)


def floor(args: argparse.Namespace, device: torch.device, concat: bool, channels_last: bool) -> Callable[[], None]:
    online = Backbone(make_net(args.arch, device, channels_last), "avgpool")
    target = copy.deepcopy(online).requires_grad_(False)
    opt = adam(online.parameters())
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    views = [
        torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=fmt) for _ in "12"
    ]
    both = torch.cat(views).contiguous(memory_format=fmt)

    def step() -> None:
        if concat:
            loss = online(both).float().square().mean()
            with torch.no_grad():
                target(both)
        else:
            loss = sum(online(view).float().square().mean() for view in views)
            with torch.no_grad():
                for view in views:
                    target(view)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def our_views(args: argparse.Namespace, device: torch.device, images: Tensor) -> Callable[[], None]:
    fmt = torch.contiguous_format if args.no_channels_last else torch.channels_last
    view1 = View(args.size, VIEW1, memory_format=fmt)
    view2 = View(args.size, VIEW2, memory_format=fmt)
    return lambda: (view1(images), view2(images))


def kornia_views(args: argparse.Namespace, device: torch.device, images: Tensor) -> Callable[[], None]:
    import kornia.augmentation as K

    def pipeline(blur_p: float, solarize_p: float) -> nn.Module:
        k = blur_kernel_size(args.size)
        ops = [
            K.RandomResizedCrop((args.size, args.size), scale=(0.08, 1.0)),
            K.RandomHorizontalFlip(),
            K.ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.8),
            K.RandomGrayscale(p=0.2),
            K.RandomGaussianBlur((k, k), (0.1, 2.0), p=blur_p),
        ]
        if solarize_p > 0:
            ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p))
        ops.append(K.Normalize(torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)))
        return nn.Sequential(*ops).to(device)

    view1, view2 = pipeline(VIEW1.blur_p, VIEW1.solarize_p), pipeline(VIEW2.blur_p, VIEW2.solarize_p)
    return lambda: (view1(images), view2(images))


def timed(fn: Callable[[], None], steps: int, device: torch.device, autocast) -> float:
    """Seconds for `steps` calls, synchronising the device around them."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with autocast():
        for _ in range(steps):
            fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def installed(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def main() -> int:
    args = parse_args()
    if args.quick:
        args.steps, args.rounds = 1, 5
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bf16 = device.type == "cuda" or args.bf16
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext  # noqa: E731
    torch.manual_seed(0)
    images = torch.rand(args.batch, 3, args.size, args.size, device=device)
    has_peer, has_kornia = installed("byol_pytorch"), installed("kornia")
    for name, present in (("byol-pytorch", has_peer), ("kornia", has_kornia)):
        if not present:
            print(
                f"{name} is not installed (pip install -e '.[bench]'): its candidates and ratios are left out",
                flush=True,
            )
    steps = {"ours": ours(args, device, images)}
    if has_peer:
        steps["peer"] = peer(args, device, images, channels_last=False)
        steps["peer_cl"] = peer(args, device, images, channels_last=not args.no_channels_last)
    steps.update(
        floor_separate=floor(args, device, concat=False, channels_last=not args.no_channels_last),
        floor_concat=floor(args, device, concat=True, channels_last=not args.no_channels_last),
        floor_nchw=floor(args, device, concat=True, channels_last=False),
    )
    augments = {"views_ours": our_views(args, device, images)}
    if has_kornia:
        augments["views_kornia"] = kornia_views(args, device, images)
    print(
        f"# {args.arch} {args.size}x{args.size} batch {args.batch} on {device} ({torch.get_num_threads()} threads), "
        f"channels_last={not args.no_channels_last}, bf16={bf16}, "
        f"{args.rounds} rounds x {args.steps} steps, torch {torch.__version__}",
        flush=True,
    )
    for fn in list(steps.values()) + list(augments.values()):
        timed(fn, 1, device, autocast)  # warm-up: lazy init, allocator, cudnn autotune
    rates: dict[str, list[float]] = {name: [] for name in steps}
    view_ms: dict[str, list[float]] = {name: [] for name in augments}
    for round_index in range(args.rounds):
        for name, fn in steps.items():
            rates[name].append(args.steps * args.batch / timed(fn, args.steps, device, autocast))
        for name, fn in augments.items():
            view_ms[name].append(1000 * timed(fn, args.steps, device, autocast) / args.steps)
        print(f"round {round_index + 1}: " + ", ".join(f"{n} {r[-1]:.1f} img/s" for n, r in rates.items()), flush=True)
    median = {name: statistics.median(values) for name, values in rates.items()}
    floor_name = max(("floor_separate", "floor_concat"), key=median.__getitem__)
    for name in steps:
        print(f"{name:15s} {median[name]:8.1f} img/s (median; rounds {', '.join(f'{r:.1f}' for r in rates[name])})")
    for name in augments:
        print(f"{name:15s} {statistics.median(view_ms[name]):8.1f} ms per batch, both views (median)")
    print(f"floor = {floor_name}")
    for label, other in (("floor", floor_name), ("byol-pytorch", "peer"), ("byol-pytorch on channels_last", "peer_cl")):
        if other not in rates:
            continue
        paired = statistics.median(a / b for a, b in zip(rates["ours"], rates[other]))
        print(
            f"ours / {label} = {median['ours'] / median[other]:.3f} (medians), {paired:.3f} (median of per-round "
            "ratios)"
        )
    if "peer" in median:
        print(f"byol-pytorch / its own floor (floor_nchw) = {median['peer'] / median['floor_nchw']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
