"""bench_fleet.py's part 2, the collectives inside one step: torchrun jobs of W copies of bench_fleet.py
(`--worker`), each timing the product's learner and TrainStep per mode (ddp, no_grad_sync, local, solo).
See bench_fleet.py's docstring.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fleet_end_to_end import REPO, common_overrides, free_endpoint, loadavg, machine_cpu, wire_overrides

RESULT_MARK = "BENCH_FLEET_RESULT "
BENCH = Path(__file__).resolve().parent / "bench_fleet.py"  # the script the workers run (`--worker`)


# -- part 2: the collectives in one step ---------------------------------------------------------------------------


def worker_main(spec: dict[str, Any]) -> None:
    """Part 2 in one rank (under torchrun) or the single process (W = 1); rank 0 prints the result."""
    import torch
    import torch.distributed as dist

    from agent.core.config import load_config
    from trainer.continual import resolve_device
    from trainer.distributed import join, rank_from_env
    from trainer.heads import ViewBatchNorm1d
    from trainer.learner_factory import build_learner, build_optimizer
    from trainer.train_step import TrainStep

    cfg = load_config(spec["config"], spec["overrides"])
    tc = cfg.train
    if tc.threads is not None:
        torch.set_num_threads(tc.threads)
    info = rank_from_env()
    ranks = join(info, resolve_device(tc), tc.collective_timeout_s)
    device = resolve_device(tc) if ranks.solo else ranks.device
    torch.manual_seed(tc.seed + info.rank)
    learner = build_learner(cfg.model, tc, device, cfg.augment, channels=cfg.capture.channels, rank=info.rank)
    optimizer = build_optimizer(learner, tc)
    step = TrainStep(learner, optimizer, tc, device, ranks)
    shape = (tc.batch_size, cfg.capture.height, cfg.capture.width, cfg.capture.channels)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(info.rank)).to(
        device
    )
    norms = [m for m in learner.modules() if isinstance(m, ViewBatchNorm1d)]
    grad_numel = sum(p.numel() for p in learner.parameters() if p.requires_grad)
    grad_bytes = sum(p.numel() * p.element_size() for p in learner.parameters() if p.requires_grad)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if not ranks.solo:
            dist.barrier()

    def block(mode: str, n: int) -> float:
        """Seconds per step over `n` steps of `mode`, the slowest rank's."""
        sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        if mode in ("ddp", "solo"):
            for _ in range(n):
                step(images)
        else:
            synced = [m.sync for m in norms]
            if mode == "local":
                for m in norms:
                    m.sync = False
            try:
                with step._forward.no_sync():
                    for _ in range(n):
                        step(images)
            finally:
                for m, s in zip(norms, synced):
                    m.sync = s
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = (time.perf_counter() - start) / n
        cpu[mode].append((time.process_time() - cpu_start) / n)
        if ranks.solo:
            return elapsed
        slowest = torch.tensor([elapsed], dtype=torch.float64)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX, group=ranks._objects)
        return float(slowest)

    modes = ["solo"] if ranks.solo else ["ddp", "no_grad_sync", "local"]
    cpu: dict[str, list[float]] = {m: [] for m in modes}  # this rank's CPU seconds per step (all its threads)
    block(modes[0], spec["warmup_steps"])
    for values in cpu.values():
        values.clear()
    times: dict[str, list[float]] = {m: [] for m in modes}
    for rnd in range(spec["rounds"]):
        for mode in modes if rnd % 2 == 0 else list(reversed(modes)):
            times[mode].append(block(mode, spec["steps"]))
    result: dict[str, Any] = {
        "world": ranks.world_size,
        "device": str(device),
        "backend": None if ranks.solo else dist.get_backend(),
        "grad_numel": grad_numel,
        "grad_bytes": grad_bytes,
        "norms": len(norms),
        "batch": tc.batch_size,
        "image_size": cfg.model.image_size,
        "encoder": cfg.model.encoder,
        "threads": torch.get_num_threads(),
        "median_s": {m: statistics.median(v) for m, v in times.items()},
        "all_s": times,
        "cpu_s": {m: statistics.median(v) for m, v in cpu.items()},
        "all_cpu_s": cpu,
    }
    if not ranks.solo:
        # The head BatchNorm all_reduces of one product step: one per view and layer forward, and one more
        # backward where the input carries a gradient (the target's projector runs without).
        calls = {"forward": 0, "backward": 0, "numel": 0}
        originals = {}
        for m in norms:

            def counted(x, _m=m, _orig=m._synced):
                calls["forward"] += 1
                calls["backward"] += int(x.requires_grad)
                calls["numel"] = max(calls["numel"], 2 * x.shape[1] + 1)
                return _orig(x)

            originals[m] = m._synced
            m._synced = counted
        step(images)
        for m, orig in originals.items():
            m._synced = orig
        result["bn_allreduces"] = calls["forward"] + calls["backward"]

        def bare(numel: int) -> float:
            flat = torch.zeros(numel, dtype=torch.float32, device=device)
            took = []
            for i in range(spec["allreduce_reps"] + 2):
                sync()
                start = time.perf_counter()
                dist.all_reduce(flat)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i >= 2:
                    took.append(time.perf_counter() - start)
            return statistics.median(took)

        result["bare_allreduce_s"] = bare(grad_numel)
        result["bare_small_allreduce_s"] = bare(calls["numel"])
        result["small_numel"] = calls["numel"]
    if info.rank == 0:
        print(RESULT_MARK + json.dumps(result), flush=True)
    ranks.close()


def part2(args: argparse.Namespace, env: dict[str, str]) -> dict[int, dict[str, Any]]:
    print(
        f"== part 2: one step's collectives, the product's learner and TrainStep on random frames; "
        f"{args.rounds} interleaved rounds of {args.steps} steps per mode, medians of the slowest rank",
        flush=True,
    )
    spec = {
        "config": args.config,
        "overrides": [*common_overrides(args), *wire_overrides([free_endpoint()])],
        "steps": args.steps,
        "rounds": args.rounds,
        "warmup_steps": args.warmup_steps,
        "allreduce_reps": args.allreduce_reps,
    }
    here = str(BENCH)
    results = {}
    for world in args.nproc:
        worker = [here, "--worker", json.dumps(spec)]
        if world == 1:
            argv = [sys.executable, *worker]
        else:
            argv = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node",
                str(world),
                *worker,
            ]
        before, kids_before, t0 = machine_cpu(), os.times(), time.monotonic()
        done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800, check=False)
        after, kids_after, wall = machine_cpu(), os.times(), time.monotonic() - t0
        found = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
        if done.returncode != 0 or not found:
            raise RuntimeError(
                f"part 2 at {world} rank(s) failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}"
            )
        r = json.loads(found[-1][len(RESULT_MARK) :])
        ours = (
            kids_after.children_user
            + kids_after.children_system
            - kids_before.children_user
            - kids_before.children_system
        ) / wall
        r["load"] = (
            f"{loadavg()}; over the job: its processes {ours:.2f} cores, machine busy "
            f"{(after[0] - before[0]) / wall:.2f}, steal {(after[1] - before[1]) / wall:.2f}"
        )
        results[world] = r
        med = r["median_s"]
        head = (
            f"  {world} rank(s) ({r['device']}, {r['backend'] or 'no process group'}, {r['encoder']} "
            f"{r['image_size']} px, batch {r['batch']} per rank, {r['threads']} thread(s)): "
        )
        if world == 1:
            print(
                head
                + f"step {med['solo'] * 1e3:.1f} ms, CPU {r['cpu_s']['solo'] * 1e3:.0f} ms (rounds "
                + " ".join(f"{t * 1e3:.0f}" for t in r["all_s"]["solo"])
                + f"); load {r['load']}",
                flush=True,
            )
            continue
        grad_share = (med["ddp"] - med["no_grad_sync"]) / med["ddp"]
        all_share = (med["ddp"] - med["local"]) / med["ddp"]
        rounds = r["all_s"]
        paired = {
            m: sorted((d - o) / med["ddp"] for d, o in zip(rounds["ddp"], rounds[m])) for m in ("no_grad_sync", "local")
        }
        print(
            head + f"step ddp {med['ddp'] * 1e3:.1f} ms, no_grad_sync {med['no_grad_sync'] * 1e3:.1f} ms, "
            f"local {med['local'] * 1e3:.1f} ms; rank 0's CPU per step "
            + ", ".join(f"{m} {r['cpu_s'][m] * 1e3:.0f} ms" for m in ("ddp", "no_grad_sync", "local")),
            flush=True,
        )
        for mode in ("ddp", "no_grad_sync", "local"):
            print(
                f"    {mode:12s} per round (ms/step): " + " ".join(f"{t * 1e3:.0f}" for t in rounds[mode]), flush=True
            )
        pmed = {m: statistics.median(v) for m, v in paired.items()}
        print(
            f"    gradient all-reduce share of a step (ddp - no_grad_sync) / ddp = {grad_share:+.3f} (median of the "
            f"per-round paired differences {pmed['no_grad_sync']:+.3f}, range {paired['no_grad_sync'][0]:+.3f} .. "
            f"{paired['no_grad_sync'][-1]:+.3f})",
            flush=True,
        )
        print(
            f"    every per-step collective (ddp - local) / ddp = {all_share:+.3f} "
            f"(paired median {pmed['local']:+.3f}, "
            f"range {paired['local'][0]:+.3f} .. {paired['local'][-1]:+.3f}); load {r['load']}",
            flush=True,
        )
        c = r["cpu_s"]
        print(
            f"    on rank 0's CPU seconds (less sensitive to other jobs' load): gradient all-reduce "
            f"{(c['ddp'] - c['no_grad_sync']) / c['ddp']:+.3f}, "
            f"every per-step collective {(c['ddp'] - c['local']) / c['ddp']:+.3f} "
            f"of its CPU per ddp step",
            flush=True,
        )
        direct = r["bare_allreduce_s"] + r["bn_allreduces"] * r["bare_small_allreduce_s"]
        print(
            f"    gradients {r['grad_numel'] / 1e6:.2f} M params = {r['grad_bytes'] / 1e6:.1f} MB per step; bare "
            f"all_reduce of that buffer {r['bare_allreduce_s'] * 1e3:.2f} ms "
            f"({r['grad_bytes'] / r['bare_allreduce_s'] / 1e9:.2f} GB/s algorithmic) = "
            f"{r['bare_allreduce_s'] / med['ddp']:.3f} of a step; {r['bn_allreduces']} head-BatchNorm all_reduces "
            f"per step ({r['norms']} layers, <= {r['small_numel']} floats) "
            f"at {r['bare_small_allreduce_s'] * 1e3:.2f} ms "
            f"bare each; all of them bare, serialised: {direct * 1e3:.1f} ms = {direct / med['ddp']:.3f} of a step",
            flush=True,
        )
        r["direct_share"] = direct / med["ddp"]
        r["grad_share"], r["all_share"] = grad_share, all_share
    return results
