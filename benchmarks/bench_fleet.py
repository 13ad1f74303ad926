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
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
RESULT_MARK = "BENCH_FLEET_RESULT "
CLK_TCK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 120.0


# -- helpers -------------------------------------------------------------------------------------------------------


def free_endpoint() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(parent, []).append(int(entry))
    return tree


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) of `root` and every live descendant (Linux /proc; 0 elsewhere)."""
    if not Path("/proc").is_dir():
        return 0.0
    tree, total, todo = _children(), 0.0, [root]
    while todo:
        pid = todo.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
        todo.extend(tree.get(pid, []))
    return total


def machine_cpu() -> tuple[float, float, float]:
    """(busy, steal, total) CPU seconds of the whole machine since boot, from /proc/stat (zeros elsewhere)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0, 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK, sum(fields) / CLK_TCK


def rank_pids(log: Path) -> list[int]:
    """The ranks' pids in rank order, from the trainer's log ("rank R of N (pid P, ...)")."""
    found = dict(re.findall(r"rank (\d+) of \d+ \(pid (\d+)", log.read_text(errors="replace")))
    return [int(found[r]) for r in sorted(found, key=int)]


def records(run_dir: Path) -> list[dict]:
    """metrics.jsonl's training records (a line being written is left out: trainer.report reads it)."""
    from trainer.run_records import read_metrics  # the repo is on sys.path once main() runs

    if not (run_dir / "metrics.jsonl").exists():
        return []
    return [record for record in read_metrics(run_dir).train if "loss" in record]


def read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# -- part 1: the product, end to end -------------------------------------------------------------------------------


def common_overrides(args: argparse.Namespace) -> list[str]:
    """Overrides both the trainer and the part-2 workers take: the model and its input, threads, device."""
    words = [f"train.device={args.device}"]
    if args.threads is not None:
        words.append(f"train.threads={args.threads}")
    if args.batch is not None:
        words.append(f"train.batch_size={args.batch}")
    if args.image_size is not None:
        words.append(f"model.image_size={args.image_size}")
    if args.encoder is not None:
        words.append(f"model.encoder={args.encoder}")
    if args.capture_size is not None:
        words += [f"capture.height={args.capture_size}", f"capture.width={args.capture_size}"]
    return [*words, *args.set]


def wire_overrides(endpoints: list[str]) -> list[str]:
    listed = ", ".join(f"'{e}'" for e in endpoints)
    return [
        f"wire.endpoint={endpoints[0]}",
        f"wire.endpoints=[{listed}]",
        "wire.publish=null",
        "wire.secret_key=null",
        "wire.trainer_key=null",
        "wire.authorized_keys=null",
        "wire.insecure=false",
    ]


def run_world(args: argparse.Namespace, world: int, work: Path, env: dict[str, str]) -> dict[str, Any]:
    """One end-to-end run at `world` ranks; its window's figures."""
    run_dir, log_path, cap_log = work / f"run-w{world}", work / f"train-w{world}.log", work / f"capture-w{world}.log"
    cap_status = work / f"capture-w{world}.json"
    endpoints = [free_endpoint() for _ in range(world)]
    shared = [*common_overrides(args), *wire_overrides(endpoints)]
    train_argv = [sys.executable, "-m", "agent.cli", "train", "--run-dir", str(run_dir)]
    if args.config:
        train_argv += ["--config", args.config]
    if world > 1:
        train_argv += ["--nproc", str(world)]
    train_argv += [
        *shared,
        "train.replay_ratio=1e6",
        "train.checkpoint_every=1000000000",
        "export.every_steps=null",
        "export.every_seconds=null",
        f"train.metrics_every={args.metrics_every}",
    ]
    cap_argv = [
        sys.executable,
        "-m",
        "agent.cli",
        "capture",
        "--publish",
        "none",
        "--fps",
        str(args.fps),
        "--status-file",
        str(cap_status),
        "--stats-every",
        "30",
    ]
    if args.config:
        cap_argv += ["--config", args.config]
    for camera in range(world):
        cap_argv += ["--source", f"demo:{camera}"]
    for endpoint in endpoints:
        cap_argv += ["--endpoint", endpoint]
    cap_argv += [*shared, "capture.novelty_threshold=0", "capture.lossless=false"]

    with open(log_path, "wb") as train_out, open(cap_log, "wb") as cap_out:
        trainer = subprocess.Popen(train_argv, cwd=REPO, env=env, stdout=train_out, stderr=subprocess.STDOUT)
        capture = subprocess.Popen(cap_argv, cwd=REPO, env=env, stdout=cap_out, stderr=subprocess.STDOUT)
    out: dict[str, Any] = {"world": world}
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not records(run_dir):
            for proc, name, path in ((trainer, "train", log_path), (capture, "capture", cap_log)):
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited ({proc.returncode}) before training began:\n{path.read_text()[-3000:]}"
                    )
            if time.monotonic() > deadline:
                raise RuntimeError(f"no training record after {START_TIMEOUT_S:.0f} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        out["load_start"] = loadavg()
        time.sleep(args.warmup)

        ranks = rank_pids(log_path) if world > 1 else [trainer.pid]

        def sample() -> dict[str, Any]:
            return {
                "record": records(run_dir)[-1],
                "cap": read_json(cap_status),
                "t": time.monotonic(),
                "cpu_train": tree_cpu_s(trainer.pid),
                "cpu_cap": tree_cpu_s(capture.pid),
                "cpu_ranks": [tree_cpu_s(pid) for pid in ranks],
                "machine": machine_cpu(),
            }

        first = sample()
        time.sleep(args.window)
        last = sample()
        out["load_end"] = loadavg()
        for proc, name in ((trainer, "train"), (capture, "capture")):
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}) during the window")
    finally:
        for proc in (capture, trainer):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # the launcher passes it to the ranks: one final checkpoint, exit 0
        codes = []
        for proc in (capture, trainer):
            try:
                codes.append(proc.wait(timeout=STOP_TIMEOUT_S))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        out["exit_codes"] = codes
    if "Traceback" in log_path.read_text():
        raise RuntimeError(f"the trainer logged a traceback:\n{log_path.read_text()[-3000:]}")

    a, b = first["record"], last["record"]
    span = b["time"] - a["time"]
    steps = b["step"] - a["step"]
    if steps <= 0 or span <= 0:
        raise RuntimeError(f"no steps in the window (records {a['step']} -> {b['step']})")
    per_rank_a = a.get("frames_in_per_rank", [a["frames_in"]])
    per_rank_b = b.get("frames_in_per_rank", [b["frames_in"]])
    wall = last["t"] - first["t"]
    out.update(
        steps=steps,
        span_s=span,
        steps_per_s=steps / span,
        frames_per_s=(b["frames_in"] - a["frames_in"]) / span,
        frames_per_s_per_rank=[(y - x) / span for x, y in zip(per_rank_a, per_rank_b)],
        fill_per_rank=b.get("buffer_fill_per_rank", [b["buffer_fill"]]),
        record_world=b.get("world_size", 1),
        cores_train=(last["cpu_train"] - first["cpu_train"]) / wall,
        cores_capture=(last["cpu_cap"] - first["cpu_cap"]) / wall,
        cores_per_rank=[(y - x) / wall for x, y in zip(first["cpu_ranks"], last["cpu_ranks"])],
        machine_busy=(last["machine"][0] - first["machine"][0]) / wall,
        machine_steal=(last["machine"][1] - first["machine"][1]) / wall,
        loss=b["loss"],
        frames_dropped=b["frames_dropped"],
    )
    ca, cb = first["cap"], last["cap"]
    if ca and cb and cb["time"] > ca["time"]:
        dt = cb["time"] - ca["time"]
        out["cap_sent_per_s"] = (cb["sent"] - ca["sent"]) / dt
        out["cap_dropped_per_s"] = (cb["dropped"] - ca["dropped"]) / dt
        out["cap_read_per_s"] = (cb["frames_read"] - ca["frames_read"]) / dt
        out["cap_sent_per_endpoint_per_s"] = [
            (y - x) / dt for x, y in zip(ca["sent_per_endpoint"], cb["sent_per_endpoint"])
        ]
    return out


def part1(args: argparse.Namespace, work: Path, env: dict[str, str]) -> dict[int, dict[str, Any]]:
    print(
        f"== part 1: byol-agent train fed by byol-agent capture over loopback ZeroMQ; {args.fps:g} fps per rank "
        f"(one demo camera per rank, lossy, novelty gate off); replay-ratio gate off (train.replay_ratio=1e6); "
        f"{args.warmup:g} s warm-up after the first step, {args.window:g} s window",
        flush=True,
    )
    from agent.core.config import load_config

    batch = load_config(args.config, common_overrides(args)).train.batch_size
    results = {}
    for world in args.nproc:
        r = run_world(args, world, work, env)
        r["batch"] = batch
        r["images_per_s"] = r["steps_per_s"] * r["batch"] * world
        r["images_per_cpu_s"] = r["images_per_s"] / r["cores_train"] if r["cores_train"] > 0 else float("nan")
        results[world] = r
        share = "/".join(f"{x:.1f}" for x in r["frames_per_s_per_rank"])
        fill = "/".join(f"{x:.2f}" for x in r["fill_per_rank"])
        cap = (
            (
                f"capture read {r['cap_read_per_s']:.1f}/s sent {r['cap_sent_per_s']:.1f}/s "
                f"(per endpoint {'/'.join(f'{x:.1f}' for x in r['cap_sent_per_endpoint_per_s'])}) "
                f"dropped {r['cap_dropped_per_s']:.1f}/s"
            )
            if "cap_sent_per_s" in r
            else "capture status missing"
        )
        print(
            f"  {world} rank(s): {r['steps']} steps in {r['span_s']:.1f} s = {r['steps_per_s']:.2f} steps/s, "
            f"{r['images_per_s']:.0f} images/s (batch {r['batch']} x {world}); frames in {r['frames_per_s']:.1f}/s "
            f"(per rank {share}), buffer fill per rank {fill}; cores: trainer {r['cores_train']:.2f} "
            f"({r['images_per_cpu_s']:.0f} images per trainer CPU s), capture {r['cores_capture']:.2f}; load {r['load_start']} -> {r['load_end']}; exit codes "
            f"capture/train {r['exit_codes'][0]}/{r['exit_codes'][1]}",
            flush=True,
        )
        print(f"    feeder: {cap}; trainer frames_dropped (malformed + rejected) {r['frames_dropped']}", flush=True)
        others = r["machine_busy"] - r["cores_train"] - r["cores_capture"]
        print(
            f"    cores per rank {'/'.join(f'{x:.2f}' for x in r['cores_per_rank'])}; machine busy "
            f"{r['machine_busy']:.2f} of {os.cpu_count()} cores, of which other processes ~{others:.2f}; "
            f"hypervisor steal {r['machine_steal']:.2f}",
            flush=True,
        )
    return results


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
    here = str(Path(__file__).resolve())
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
            f"    every per-step collective (ddp - local) / ddp = {all_share:+.3f} (paired median {pmed['local']:+.3f}, "
            f"range {paired['local'][0]:+.3f} .. {paired['local'][-1]:+.3f}); load {r['load']}",
            flush=True,
        )
        c = r["cpu_s"]
        print(
            f"    on rank 0's CPU seconds (less sensitive to other jobs' load): gradient all-reduce "
            f"{(c['ddp'] - c['no_grad_sync']) / c['ddp']:+.3f}, every per-step collective {(c['ddp'] - c['local']) / c['ddp']:+.3f} "
            f"of its CPU per ddp step",
            flush=True,
        )
        direct = r["bare_allreduce_s"] + r["bn_allreduces"] * r["bare_small_allreduce_s"]
        print(
            f"    gradients {r['grad_numel'] / 1e6:.2f} M params = {r['grad_bytes'] / 1e6:.1f} MB per step; bare "
            f"all_reduce of that buffer {r['bare_allreduce_s'] * 1e3:.2f} ms "
            f"({r['grad_bytes'] / r['bare_allreduce_s'] / 1e9:.2f} GB/s algorithmic) = "
            f"{r['bare_allreduce_s'] / med['ddp']:.3f} of a step; {r['bn_allreduces']} head-BatchNorm all_reduces "
            f"per step ({r['norms']} layers, <= {r['small_numel']} floats) at {r['bare_small_allreduce_s'] * 1e3:.2f} ms "
            f"bare each; all of them bare, serialised: {direct * 1e3:.1f} ms = {direct / med['ddp']:.3f} of a step",
            flush=True,
        )
        r["direct_share"] = direct / med["ddp"]
        r["grad_share"], r["all_share"] = grad_share, all_share
    return results


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
                f"{r['frames_per_s'] / base['frames_per_s']:.3f}x; trainer cores {r['cores_train'] / base['cores_train']:.3f}x, "
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
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, CUDA devices {torch.cuda.device_count()}, load {loadavg()}; "
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
