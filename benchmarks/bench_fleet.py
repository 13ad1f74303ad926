"""Continual training at 1 and N ranks: steps/s, images/s, frames/s, and the all-reduce share of a step.

Part 1, the product end to end, for each world size W in --nproc: the real `byol-agent train` (W = 1 plain,
W > 1 `train --nproc W`, which runs it under torchrun: gloo on the CPU, nccl on CUDA, the product's choice)
fed by one real `byol-agent capture` over loopback ZeroMQ: W demo cameras at --fps each, one `--endpoint` per
rank (the capture spreads its frames over them), lossy as a live camera, novelty gate off. The replay-ratio
gate is set out of reach (`train.replay_ratio=1e6`), so training, not frames, is the limit; the feeder's
only job is to keep every shard past `buffer.min_fill`, which the bench checks (every rank's frames_in and
buffer fill, the capture's drops). After the first training record and --warmup seconds, a --window second
window is read off rank 0's metrics.jsonl (records every --metrics-every steps):
  steps/s                     steps of the window / its seconds (each step: one batch on every rank)
  images/s                    steps/s x batch x W (rank 0's own `img_per_s` field counts one rank's batch)
  frames in/s                 the run's frames_in (all ranks) over the window, and each rank's share
  cores                       CPU seconds per second of the trainer's process tree (launcher, torchrun,
                              ranks) and of the capture, from /proc
Checkpoints and exports are off during the window (`train.checkpoint_every=1e9`, `export.every_steps=null`):
this is the training loop's throughput, not the publishing path's.

Part 2, the collectives inside one step, for each W: a torchrun job of W copies of this script (W = 1: one
process) building the same learner as the trainer (trainer.learner_factory.build_learner inside the process group,
so the heads' BatchNorm syncs across ranks; DDP via trainer.distributed's `Ranks.wrap`, inside the product's
`TrainStep`), on random uint8 frames of the capture size. Interleaved rounds of --steps steps per mode:
  ddp           the product's step (DDP gradient all-reduce, synced head BatchNorm, loss mean)
  no_grad_sync  the same under DDP's `no_sync()`: no gradient all-reduce
  local         no_sync and the heads' BatchNorm statistics local: only the loss mean and DDP's buffer
                broadcast stay collective
  solo          (W = 1) the single-process step, no process group
Medians over rounds of the slowest rank's time per step (and each round's, and the spread of the per-round
paired differences: the subtraction is only as good as that spread). Printed: the gradient all-reduce share
(ddp - no_grad_sync) / ddp, the share of every per-step collective (ddp - local) / ddp, the gradient bytes
per step, and a direct bound: a bare `dist.all_reduce` of a flat buffer of that size (no overlap with
backward) plus the step's head-BatchNorm all_reduces (counted in one step) at the bare latency of their size,
all serialised, as a share of the ddp step.

Ratios (same run): steps/s and images/s at W vs 1, scaling efficiency = images/s(W) / (W x images/s(1)).

    python benchmarks/bench_fleet.py [--nproc 1,2] [--window 45] [--warmup 15] [--fps 30] [--threads 1]
        [--config FILE] [--device cpu|cuda|auto] [--batch N] [--image-size PX] [--encoder NAME]
        [--capture-size PX] [--set key=value ...] [--skip part1|part2]

On a multi-GPU box (not run here), e.g.:
    python benchmarks/bench_fleet.py --device cuda --nproc 1,2,4,8 --config configs/gpu-resnet50.yaml \
        --threads 4 --fps 500 --set buffer.min_fill=1024 --set buffer.policy=fifo
(the bench points every endpoint at loopback and drops the config's CURVE keys; `--fps` per rank must
fill each shard's min_fill in reasonable time; the replay-ratio gate stays out of reach either way).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fleet_collectives import part2, worker_main
from fleet_end_to_end import REPO, common_overrides, cpu_model, loadavg, part1

# -- main ----------------------------------------------------------------------------------------------------------


def summary(p1: dict[int, dict[str, Any]], p2: dict[int, dict[str, Any]]) -> None:
    print("== ratios (same run)", flush=True)
    if 1 in p1:
        base = p1[1]
        for world, r in p1.items():
            if world == 1:
                continue
            eff = r["images_per_s"] / (world * base["images_per_s"])
            print(
                f"  end to end, {world} vs 1 rank(s): steps/s {r['steps_per_s'] / base['steps_per_s']:.3f}x, "
                f"images/s {r['images_per_s'] / base['images_per_s']:.3f}x, scaling efficiency "
                f"images/s({world}) / ({world} x images/s(1)) = {eff:.3f}; frames in/s "
                f"{r['frames_per_s'] / base['frames_per_s']:.3f}x; "
                f"trainer cores {r['cores_train'] / base['cores_train']:.3f}x, "
                f"images per trainer CPU s {r['images_per_cpu_s'] / base['images_per_cpu_s']:.3f}x",
                flush=True,
            )
    if 1 in p2:
        solo = p2[1]["median_s"]["solo"]
        for world, r in p2.items():
            if world == 1:
                continue
            med = r["median_s"]
            cpu_solo, c = p2[1]["cpu_s"]["solo"], r["cpu_s"]
            print(
                f"  one step's CPU on a rank, {world} rank(s) vs 1: ddp {c['ddp'] / cpu_solo:.3f}x, no_grad_sync "
                f"{c['no_grad_sync'] / cpu_solo:.3f}x, local {c['local'] / cpu_solo:.3f}x",
                flush=True,
            )
            print(
                f"  one step, {world} rank(s) vs 1: ddp {med['ddp'] / solo:.3f}x, no_grad_sync "
                f"{med['no_grad_sync'] / solo:.3f}x, local {med['local'] / solo:.3f}x the single-process step "
                f"(images/s per step-time scaling {world * solo / med['ddp']:.3f} of {world})",
                flush=True,
            )


def parse_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of world sizes such as 1,2")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=parse_list, default=[1, 2], help="world sizes, comma-separated (default 1,2)")
    parser.add_argument("--window", type=float, default=45.0, help="part 1: measured seconds per world size")
    parser.add_argument(
        "--warmup", type=float, default=15.0, help="part 1: seconds after the first step before the window"
    )
    parser.add_argument("--fps", type=float, default=30.0, help="part 1: frames per second offered to each rank")
    parser.add_argument("--metrics-every", type=int, default=5, help="part 1: steps per metrics record")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank (train.threads)")
    parser.add_argument("--config", default=None, help="config file (default: the product's configs/default.yaml)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help="train.device")
    parser.add_argument("--batch", type=int, default=None, help="train.batch_size per rank (default: the config's)")
    parser.add_argument("--image-size", type=int, default=None, help="model.image_size (default: the config's)")
    parser.add_argument("--encoder", default=None, help="model.encoder (default: the config's)")
    parser.add_argument("--capture-size", type=int, default=None, help="capture.height/width (default: the config's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other config override")
    parser.add_argument("--steps", type=int, default=1, help="part 2: steps per timed block")
    parser.add_argument("--rounds", type=int, default=25, help="part 2: interleaved rounds per mode")
    parser.add_argument("--warmup-steps", type=int, default=5, help="part 2: untimed steps first")
    parser.add_argument("--allreduce-reps", type=int, default=20, help="part 2: bare all_reduce repetitions")
    parser.add_argument("--skip", choices=("part1", "part2"), default=None)
    parser.add_argument(
        "--work", type=Path, default=None, help="part 1's run directories and logs (default: a temp dir)"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: part 2 in one rank
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if args.worker is not None:
        worker_main(json.loads(args.worker))
        return

    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    print(
        f"# bench_fleet: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, {platform.machine()}, {cpu_model()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, CUDA devices {torch.cuda.device_count()}, "
        f"load {loadavg()}; "
        f"world sizes {args.nproc}, device {args.device}, {args.threads} thread(s) per rank, config "
        f"{args.config or 'configs/default.yaml'}, overrides {common_overrides(args)}",
        flush=True,
    )
    started = time.monotonic()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    work.mkdir(parents=True, exist_ok=True)
    p1 = part1(args, work, env) if args.skip != "part1" else {}
    p2 = part2(args, env) if args.skip != "part2" else {}
    summary(p1, p2)
    print(f"# total wall {time.monotonic() - started:.0f} s, load {loadavg()}; logs in {work}", flush=True)


if __name__ == "__main__":
    main()
