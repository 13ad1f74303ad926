"""Hot swap under load, exporter cost, and ONNX vs torch latency (ResNet-18, CPU).

1. Swap: two threads call `HotEncoder.embed` at batch 1 without pause while N new versions are
   published (real files, real Publisher, real watcher). Steady windows (nothing published) and
   swap windows alternate in the same run, so the p99 baseline shares the machine's conditions.
   Gates: zero failed calls, every version served, p99 during swaps ≤ 1.5× steady p99,
   publish → first inference on the new version ≤ poll interval + 1 s.
2. Export time: TorchScript vs dynamo exporter on the same encoder, interleaved.
3. Latency: onnxruntime vs torch eager at batch 1 and 32 (same in-graph preprocessing), interleaved.

    python benchmarks/bench_swap.py            # full run (a few minutes on 2 cores)
    python benchmarks/bench_swap.py --quick    # fewer versions, shorter windows
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.core.config import ExportConfig, ModelConfig  # noqa: E402
from agent.core.demo_scene import DemoScene  # noqa: E402
from agent.robot.runtime import HotEncoder  # noqa: E402
from export.exporter import manifest_fields  # noqa: E402
from export.onnx_export import PreprocessedEncoder, export_onnx, input_spec  # noqa: E402
from export.publish import Publisher  # noqa: E402
from export.verify import verify_onnx  # noqa: E402
from trainer.normalise import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402


def resnet18(seed: int) -> torch.nn.Module:
    """torchvision ResNet-18, random init (no downloads), cut at avgpool: (N, 3, H, W) → (N, 512)."""
    torch.manual_seed(seed)
    net = torchvision.models.resnet18(weights=None)
    net.fc = torch.nn.Identity()
    return net.eval()


def demo_frames(n: int, size: int) -> np.ndarray:
    scene = DemoScene(size, size, seed=0)
    return np.stack([scene.render(0.4 * i) for i in range(n)])


@dataclass
class Staged:
    path: Path
    fields: dict


def stage_versions(count: int, folder: Path, image_size: int, frames: np.ndarray) -> list[Staged]:
    """Export and verify `count` differently initialised encoders before the clock starts."""
    cfg = ExportConfig()
    model = ModelConfig(image_size=image_size)
    spec = input_spec(cfg.input_format, image_size, IMAGENET_MEAN, IMAGENET_STD)
    staged = []
    for i in range(count):
        encoder = resnet18(seed=i)
        path = folder / f"staged-{i}.onnx"
        exported = export_onnx(
            PreprocessedEncoder(encoder, IMAGENET_MEAN, IMAGENET_STD, cfg.input_format), spec, path, cfg
        )
        verification = verify_onnx(path, encoder, frames, spec, cfg)
        staged.append(Staged(path, manifest_fields(i, spec, exported, verification, cfg, model)))
    return staged


def publish(publisher: Publisher, staged: Staged) -> int:
    tmp = publisher.temp_path()
    shutil.copyfile(staged.path, tmp)
    return publisher.publish(tmp, staged.fields)


@dataclass
class Call:
    start: float
    end: float
    version: int


def swap_benchmark(
    staged: list[Staged], export_dir: Path, frame: np.ndarray, poll_s: float, steady_s: float, interval_s: float
) -> bool:
    publisher = Publisher(export_dir, keep=5)
    publish(publisher, staged[0])
    calls: list[list[Call]] = [[], []]
    failures: list[BaseException] = []
    stop = threading.Event()

    with HotEncoder(export_dir, poll_interval_s=poll_s, providers="cpu", threads=1) as enc:

        def caller(log: list[Call]) -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    _, version = enc.embed_with_version(frame)
                except Exception as exc:  # counted: the gate is zero failed calls
                    failures.append(exc)
                    continue
                log.append(Call(t0, time.perf_counter(), version))

        threads = [threading.Thread(target=caller, args=(log,)) for log in calls]
        for t in threads:
            t.start()
        windows: list[tuple[str, float, float]] = []
        published_at: dict[int, float] = {}
        rest = staged[1:]
        halves = [rest[: len(rest) // 2], rest[len(rest) // 2 :]]
        for half in halves:  # steady, swaps, steady, swaps: the baseline is interleaved with the swaps
            begin = time.perf_counter()
            time.sleep(steady_s)
            windows.append(("steady", begin, time.perf_counter()))
            begin = time.perf_counter()
            for item in half:
                version = publish(publisher, item)
                published_at[version] = time.perf_counter()
                time.sleep(interval_s)
            windows.append(("swap", begin, time.perf_counter()))
        stop.set()
        for t in threads:
            t.join(30)
        swaps, resident = enc.swaps, enc.resident_sessions

    every = [c for log in calls for c in log]
    latency = np.array([(c.end - c.start) * 1e3 for c in every])
    starts = np.array([c.start for c in every])

    def in_windows(kind: str) -> np.ndarray:
        mask = np.zeros(len(every), bool)
        for name, a, b in windows:
            if name == kind:
                mask |= (starts >= a) & (starts < b)
        return mask

    steady, during = latency[in_windows("steady")], latency[in_windows("swap")]
    first_served: dict[int, float] = {}
    for c in every:
        first_served[c.version] = min(first_served.get(c.version, np.inf), c.end)
    delays = {v: first_served.get(v, np.inf) - t for v, t in published_at.items()}
    versions = sorted(first_served)
    p99_steady, p99_swap = np.percentile(steady, 99), np.percentile(during, 99)
    loading = np.zeros(len(every), bool)  # calls overlapping a publish → new version serving interval
    ends = np.array([c.end for c in every])
    for version, t in published_at.items():
        loading |= (ends >= t) & (starts <= first_served.get(version, t))
    near = latency[loading]
    worst_delay = max(delays.values())

    print(
        f"\n== swap under load: ResNet-18 {frame.shape[0]}px batch 1, 2 caller threads (1 onnxruntime thread each), "
        f"poll {poll_s:g} s"
    )
    print(f"calls: {len(every)} ok, {len(failures)} failed; swaps {swaps}; sessions resident at the end {resident}")
    print(f"versions served: {versions[0]}..{versions[-1]} ({len(versions)} of {len(staged)})")
    print(
        f"steady  latency ms: p50 {np.percentile(steady, 50):.2f}  p99 {p99_steady:.2f}  max {steady.max():.2f}  "
        f"(n={len(steady)})"
    )
    print(
        f"swaps   latency ms: p50 {np.percentile(during, 50):.2f}  p99 {p99_swap:.2f}  max {during.max():.2f}  "
        f"(n={len(during)})"
    )
    print(f"p99 during swaps / steady p99: {p99_swap / p99_steady:.2f}x")
    print(
        f"calls overlapping a load (publish -> new version serving): p50 {np.percentile(near, 50):.2f}  "
        f"p99 {np.percentile(near, 99):.2f}  (n={len(near)}; {np.percentile(near, 99) / p99_steady:.2f}x steady p99)"
    )
    print(
        f"publish -> first inference on the new version: median {np.median(list(delays.values())):.2f} s, "
        f"max {worst_delay:.2f} s (limit {poll_s + 1:.2f} s)"
    )
    gates = {
        "zero failed calls": not failures,
        "every version served": versions == list(range(1, len(staged) + 1)),
        "p99 during swaps <= 1.5x steady p99": p99_swap <= 1.5 * p99_steady,
        "publish -> first inference <= poll + 1 s": worst_delay <= poll_s + 1.0,
    }
    for name, ok in gates.items():
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}")
    return all(gates.values())


def export_times(folder: Path, image_size: int, repeats: int) -> None:
    wrapped = PreprocessedEncoder(resnet18(seed=0), IMAGENET_MEAN, IMAGENET_STD, "uint8_nhwc")
    spec = input_spec("uint8_nhwc", image_size, IMAGENET_MEAN, IMAGENET_STD)
    times: dict[str, list[float]] = {"torchscript": [], "dynamo": []}
    for _ in range(repeats):
        for exporter in times:
            t0 = time.perf_counter()
            export_onnx(wrapped, spec, folder / f"timing-{exporter}.onnx", ExportConfig(exporter=exporter))
            times[exporter].append(time.perf_counter() - t0)
    ts, dyn = np.median(times["torchscript"]), np.median(times["dynamo"])
    print(f"\n== export time, ResNet-18 {image_size}px (median of {repeats}, interleaved)")
    print(f"torchscript {ts:.2f} s   dynamo {dyn:.2f} s   dynamo / torchscript {dyn / ts:.1f}x")


def latency_table(folder: Path, image_size: int, rounds: int) -> None:
    wrapped = PreprocessedEncoder(resnet18(seed=0), IMAGENET_MEAN, IMAGENET_STD, "uint8_nhwc").eval()
    spec = input_spec("uint8_nhwc", image_size, IMAGENET_MEAN, IMAGENET_STD)
    path = folder / "latency.onnx"
    export_onnx(wrapped, spec, path, ExportConfig())
    options = ort.SessionOptions()
    # Spinning pool threads would steal the cores from torch's OpenMP threads in the next round (and
    # OpenMP's spin-wait from onnxruntime's): no spinning here, and a pause between rounds.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    frames = demo_frames(32, image_size)
    print(
        f"\n== latency per call, ResNet-18 {image_size}px, uint8 frames in; torch {torch.get_num_threads()} threads, "
        "onnxruntime default threads (median over interleaved rounds)"
    )
    for batch in (1, 32):
        x = frames[:batch]
        xt = torch.from_numpy(x)
        iters = 50 if batch == 1 else 8
        results: dict[str, list[float]] = {"torch eager": [], "onnxruntime": []}
        with torch.inference_mode():
            wrapped(xt)
            session.run(None, {spec.name: x})
            for _ in range(rounds):
                for name in results:
                    time.sleep(0.3)
                    t0 = time.perf_counter()
                    for _ in range(iters):
                        if name == "torch eager":
                            wrapped(xt)
                        else:
                            session.run(None, {spec.name: x})
                    results[name].append((time.perf_counter() - t0) / iters * 1e3)
        te, on = np.median(results["torch eager"]), np.median(results["onnxruntime"])
        print(f"batch {batch:2d}: torch eager {te:7.2f} ms   onnxruntime {on:7.2f} ms   speed-up {te / on:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=20, help="new versions published during the run")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--poll", type=float, default=0.5, help="HotEncoder poll interval (runtime.poll_interval_s)")
    parser.add_argument("--steady", type=float, default=8.0, help="seconds per steady window (there are two)")
    parser.add_argument("--interval", type=float, default=1.5, help="seconds between publishes")
    parser.add_argument("--quick", action="store_true", help="4 versions, short windows, 1 export repeat")
    args = parser.parse_args()
    if args.quick:
        args.versions, args.steady = 4, 3.0
    print(f"onnxruntime {ort.__version__}, torch {torch.__version__}, {torch.get_num_threads()} torch threads")
    frames = demo_frames(16, args.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        staged = stage_versions(args.versions + 1, folder, args.image_size, frames)
        print(f"staged {len(staged)} verified exports in {time.perf_counter() - t0:.1f} s")
        ok = swap_benchmark(staged, folder / "exports", frames[0], args.poll, args.steady, args.interval)
        export_times(folder, args.image_size, repeats=1 if args.quick else 2)
        latency_table(folder, args.image_size, rounds=3 if args.quick else 5)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
