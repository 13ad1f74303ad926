"""HotEncoder on each onnxruntime provider this machine has (CPU / CUDA / TensorRT): per-call latency at
batch 1 and 8, swap latency (publish -> first call answered by the new version), and memory across swaps.

For each provider choice that resolves here (export.sessions.resolve_providers; the others are listed
with the reason they cannot run), one ResNet-18 cut at avgpool, random init, exported at --image-size:
  latency  median and p99 of `embed` at batch 1 and 8 after a warm-up, and each GPU provider's median
           as a ratio of the CPU's, measured in the same run;
  swaps    --swaps new versions published one at a time (--distinct different encoders staged before
           the clock starts, published in turn); per swap the wall time from publish to the first call
           served by the new version and the loader's load_s. With TensorRT a repeated encoder meets its
           cached engine (same sha256), so first-seen and repeated swaps are reported apart;
  memory   this process's RSS (and, on a GPU, its GPU memory from nvidia-smi) before the swaps and
           after them, as a ratio.

    python benchmarks/bench_runtime_providers.py                       # 20 swaps, ResNet-18 at 112 px
    python benchmarks/bench_runtime_providers.py --swaps 3 --image-size 32 --calls 20 --distinct 2   # tiny
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_swap import demo_frames, publish, stage_versions  # noqa: E402

from agent.core.errors import ConfigError  # noqa: E402
from agent.robot.runtime import HotEncoder  # noqa: E402
from agent.robot.version_watcher import SwapEvent  # noqa: E402
from export.publish import Publisher  # noqa: E402
from export.sessions import resolve_providers  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def gpu_mb() -> Optional[float]:
    """This process's GPU memory in MiB (nvidia-smi), None without one."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        pid, _, used = line.partition(",")
        if pid.strip() == str(os.getpid()):
            return float(used)
    return 0.0


def latency(enc: HotEncoder, frames: np.ndarray, calls: int) -> tuple[float, float]:
    """Median and p99 seconds of `enc.embed(frames)` over `calls` calls after 5 warm-up calls."""
    for _ in range(5):
        enc.embed(frames)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        enc.embed(frames)
        times.append(time.perf_counter() - start)
    return statistics.median(times), float(np.percentile(times, 99))


def run_provider(choice: str, staged: list, frames: np.ndarray, args: argparse.Namespace, work: Path) -> dict:
    export_dir = work / f"exports-{choice}"
    publisher = Publisher(export_dir, keep=5)
    publish(publisher, staged[0])
    swapped = threading.Event()
    events: list[SwapEvent] = []

    def on_swap(event: SwapEvent) -> None:
        events.append(event)
        swapped.set()

    result: dict = {"choice": choice}
    started = time.perf_counter()
    with HotEncoder(
        export_dir, poll_interval_s=args.poll, providers=choice, on_swap=on_swap, trt_fp16=args.trt_fp16
    ) as enc:
        result["first_load_s"] = time.perf_counter() - started
        result["providers"] = enc.providers
        for batch in (1, 8):
            result[f"b{batch}"] = latency(enc, frames[:batch], args.calls)
        rss0, gpu0 = rss_mb(), gpu_mb()
        swaps: list[tuple[int, float, float]] = []  # (staged index, publish -> served s, load_s)
        for i in range(1, args.swaps + 1):
            index = i % len(staged)
            swapped.clear()
            t0 = time.perf_counter()
            version = publish(publisher, staged[index])
            while True:  # a policy calling without pause: the first answer from the new version
                _, served = enc.embed_with_version(frames[:1])
                if served == version:
                    break
                if time.perf_counter() - t0 > args.swap_timeout:
                    raise SystemExit(
                        f"bench_runtime_providers: version {version} not served within {args.swap_timeout} s "
                        f"on {choice} (last error: {enc.last_error})"
                    )
            swaps.append((index, time.perf_counter() - t0, events[-1].load_s))
        result["swaps"] = swaps
        result["failed_loads"] = enc.failed_loads
        result["rss"] = (rss0, rss_mb())
        result["gpu"] = (gpu0, gpu_mb())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--distinct", type=int, default=4, help="different encoders staged (published in turn)")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per batch size")
    parser.add_argument("--poll", type=float, default=0.1)
    parser.add_argument("--swap-timeout", type=float, default=300.0)
    parser.add_argument("--trt-fp16", action="store_true")
    parser.add_argument("--providers", default="cpu,cuda,tensorrt")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-runtime-"))
    frames = demo_frames(8, args.image_size)
    started = time.perf_counter()
    staged = stage_versions(args.distinct, work, args.image_size, frames)
    print(
        f"# ResNet-18 at {args.image_size} px, {args.distinct} staged in {time.perf_counter() - started:.1f} s; "
        f"{args.swaps} swaps, poll {args.poll} s, {args.calls} calls per batch size",
        flush=True,
    )
    results = []
    for choice in args.providers.split(","):
        try:
            resolved = resolve_providers(choice)
        except ConfigError as exc:
            print(f"{choice:9s} not run: {exc}", flush=True)
            continue
        r = run_provider(choice, staged, frames, args, work)
        results.append(r)
        print(
            f"{choice:9s} providers {r['providers']} (asked {resolved}); first load {r['first_load_s']:.2f} s",
            flush=True,
        )
        for batch in (1, 8):
            median, p99 = r[f"b{batch}"]
            print(f"{choice:9s} batch {batch}: median {1000 * median:.3f} ms, p99 {1000 * p99:.3f} ms", flush=True)
        seen: set[int] = set()
        first, again = [], []
        for index, served_s, load_s in r["swaps"]:
            (again if index in seen else first).append((served_s, load_s))
            seen.add(index)
        for label, rows in (("first-seen", first), ("repeated", again)):
            if rows:
                print(
                    f"{choice:9s} swaps {label} ({len(rows)}): publish->served median "
                    f"{statistics.median(s for s, _ in rows):.3f} s "
                    f"max {max(s for s, _ in rows):.3f} s; "
                    f"load_s median {statistics.median(load for _, load in rows):.3f} s",
                    flush=True,
                )
        (rss0, rss1), (gpu0, gpu1) = r["rss"], r["gpu"]
        gpu = "" if gpu0 is None or gpu1 is None else f"; GPU {gpu0:.0f} -> {gpu1:.0f} MiB"
        print(
            f"{choice:9s} memory across {args.swaps} swaps: RSS {rss0:.0f} -> {rss1:.0f} MB ({rss1 / rss0:.3f}x){gpu}; "
            f"failed loads {r['failed_loads']}",
            flush=True,
        )
    cpu = next((r for r in results if r["choice"] == "cpu"), None)
    for r in results:
        if cpu is not None and r is not cpu:
            for batch in (1, 8):
                print(
                    f"ratio {r['choice']} / cpu median latency, batch {batch}: "
                    f"{r[f'b{batch}'][0] / cpu[f'b{batch}'][0]:.3f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
