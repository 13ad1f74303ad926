"""bench_fleet.py's part 1, the product end to end: `byol-agent train` (under torchrun for W > 1) fed by one
`byol-agent capture` over loopback, measured off rank 0's metrics.jsonl and /proc; and the helpers both parts
use (/proc CPU accounting, config overrides, free endpoints). See bench_fleet.py's docstring.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
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
            f"({r['images_per_cpu_s']:.0f} images per trainer CPU s), capture {r['cores_capture']:.2f}; "
            f"load {r['load_start']} -> {r['load_end']}; exit codes "
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
