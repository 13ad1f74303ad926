"""Cost of the online quality probe (train.probe_data) as a fraction of the trainer's own work, default config.

    nice -n 10 python benchmarks/bench_probe.py --threads 1     # configs/default.yaml, CPU (RESULTS.md's run)
    python benchmarks/bench_probe.py --config configs/robot-resnet18.yaml --rounds 2

Per round, in one process and interleaved (the machine may be shared): `--steps` real BYOL updates
(`TrainStep` on uint8 frames at the capture size, as the trainer runs them), then one probe of the
target encoder (`QualityMonitor`, exactly what the trainer submits at each checkpoint), both timed in
process CPU seconds (`time.process_time`, every thread of the process: torch's workers and the
probe's thread; the main thread only waits while the probe runs). The cost is one probe's CPU over
the CPU of the `train.checkpoint_every` steps between two probes; the first probe also scores the
random-init twin once, reported apart. CPU seconds rather than wall time, so other work on the
machine changes the wall clock but hardly the ratio, as long as torch has a thread per free core (on a
loaded machine OpenMP's spinning workers count CPU that is no work: use --threads 1 there).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.core.config import load_config  # noqa: E402
from trainer.learner_factory import build_learner, build_optimizer  # noqa: E402
from trainer.quality_monitor import QualityMonitor  # noqa: E402
from trainer.train_step import TrainStep  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="default: configs/default.yaml")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="timed updates per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cfg = load_config(args.config, ["train.device=cpu", f"train.threads={args.threads}"])
    torch.set_num_threads(args.threads)
    torch.manual_seed(cfg.train.seed)
    device = torch.device("cpu")
    learner = build_learner(cfg.model, cfg.train, device, cfg.augment, channels=cfg.capture.channels)
    step = TrainStep(learner, build_optimizer(learner, cfg.train), cfg.train, device)
    shape = (cfg.train.batch_size, cfg.capture.height, cfg.capture.width, cfg.capture.channels)
    frames = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = cfg.train.probe_data or "digits"
    monitor = QualityMonitor(
        data, cfg.model, cfg.eval, cfg.train.seed, learner.mean, learner.std, weights=cfg.export.weights
    )
    print(
        f"# bench_probe: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, {os.uname().machine}, "
        f"{args.threads} threads, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}; config "
        f"{args.config or 'configs/default.yaml'}: {cfg.model.encoder} at {cfg.model.image_size} px, batch "
        f"{cfg.train.batch_size}, checkpoint_every {cfg.train.checkpoint_every}; probe on {data}"
    )
    step(frames)  # warm-up (first-call allocations)

    step_cpu, probe_cpu, first_probe = [], [], None
    for r in range(args.rounds + 1):
        t0, w0 = time.process_time(), time.perf_counter()
        for _ in range(args.steps):
            step(frames)
        per_step, per_step_wall = (time.process_time() - t0) / args.steps, (time.perf_counter() - w0) / args.steps
        t0, w0 = time.process_time(), time.perf_counter()
        monitor.submit(r, None, learner.encoder_module(cfg.export.weights), wait=True)
        (result,) = monitor.close(600)
        probe, probe_wall = time.process_time() - t0, time.perf_counter() - w0
        print(
            f"round {r}: {per_step * 1e3:.0f} ms CPU per step ({per_step_wall * 1e3:.0f} ms wall); probe {probe:.2f} s "
            f"CPU ({probe_wall:.2f} s wall){' incl. the random-init twin' if r == 0 else ''}; kNN "
            f"{result.knn_top1:.3f} "
            f"(init {result.random_knn_top1:.3f})"
        )
        if r == 0:
            first_probe = probe
            continue
        step_cpu.append(per_step)
        probe_cpu.append(probe)
    per_step, probe = statistics.median(step_cpu), statistics.median(probe_cpu)
    between = cfg.train.checkpoint_every * per_step
    print(
        f"median: {per_step * 1e3:.0f} ms CPU per step, {probe:.2f} s CPU per probe; "
        f"{cfg.train.checkpoint_every} steps between probes = {between:.1f} s CPU"
    )
    print(
        f"probe cost / trainer CPU: {probe / between:.3f} ({probe / between:.1%}); the first probe "
        f"(+ random-init twin, once per run) {first_probe:.2f} s CPU = {first_probe / between:.1%} of one interval"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
