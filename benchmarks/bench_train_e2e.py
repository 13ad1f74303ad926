"""End to end: `byol-agent train` fed by a real `byol-agent capture` vs the same update without the input path.

Is the trainer input-bound? Three rates of the same config (model, batch, precision, optimizer, device),
measured in one run:
  e2e        steps/s of `byol-agent train` fed over ZeroMQ by `byol-agent capture --source demo` at
             --size x --size (capture.fps uncapped), read from metrics.jsonl over --seconds once
             training has started (the first metrics line is dropped: cudnn autotuning, allocator);
  loop       the product's update as the loop runs it, in this process: replay buffer sample (from a
             buffer filled with demo frames, on the configured buffer device) + TrainStep (input
             conversion, BatchNorm snapshot, the NaN guard reading the loss, lr, optimizer, EMA);
  learner    the bare BYOL step on float images already on the device (loss = learner(x), backward,
             optimizer, EMA; no loss read, no range check): what bench_learner.py times as "ours", less
             the range check a library caller gets.
Ratios: e2e / loop (the input path: wire, ingest, status), e2e / learner (the issue's goal: >= 0.8),
loop / learner (what TrainStep adds on top of the bare step, the per-step host sync included).

    python benchmarks/bench_train_e2e.py --config configs/gpu-resnet50.yaml --size 224     # on a GPU
    python benchmarks/bench_train_e2e.py --seconds 15 --steps 5                              # CPU, default config
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.core.config import Config, load_config  # noqa: E402
from agent.core.demo_scene import DemoScene  # noqa: E402
from agent.core.jsonl import read_jsonl  # noqa: E402
from agent.core.wire import Frame  # noqa: E402
from trainer.buffer import ReplayBuffer  # noqa: E402
from trainer.continual import resolve_device  # noqa: E402
from trainer.learner_factory import build_learner, build_optimizer  # noqa: E402
from trainer.train_step import TrainStep, use_bf16  # noqa: E402

CLI = [sys.executable, "-m", "agent.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def e2e_rate(args: argparse.Namespace, overrides: list[str], work: Path) -> tuple[float, int]:
    """steps/s of the train CLI fed by the capture CLI over `args.seconds` of training; (rate, steps)."""
    run_dir = work / "run"
    config = ["--config", args.config] if args.config else []
    common = config + overrides
    logs = [open(work / f"{name}.log", "w") for name in ("trainer", "capture")]
    trainer = subprocess.Popen(
        CLI + ["train", "--run-dir", str(run_dir)] + common, stdout=logs[0], stderr=subprocess.STDOUT, cwd=ROOT
    )
    capture = subprocess.Popen(
        CLI + ["capture", "--source", "demo"] + common + ["capture.fps=1000"],
        stdout=logs[1],
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + args.start_timeout

    def lines() -> list[dict]:
        if not metrics.exists():
            return []
        return [r for r in read_jsonl(metrics).rows if "loss" in r and "event" not in r]  # a torn line skipped

    try:
        while len(lines()) < 2:  # the first window holds autotuning and allocation: measure from the second
            if trainer.poll() is not None or capture.poll() is not None:
                raise SystemExit(
                    f"bench_train_e2e: a process exited early (trainer {trainer.returncode}, capture "
                    f"{capture.returncode}); see {work}/trainer.log and capture.log"
                )
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"bench_train_e2e: no training within {args.start_timeout:g} s; see {work}/trainer.log"
                )
            time.sleep(0.5)
        time.sleep(args.seconds)
        seen = lines()
    finally:
        for proc in (capture, trainer):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in (trainer, capture):
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()
    first, last = seen[1], seen[-1]
    if last["step"] <= first["step"]:
        raise SystemExit(f"bench_train_e2e: no steps between metrics lines; see {work}/trainer.log")
    return (last["step"] - first["step"]) / (last["time"] - first["time"]), last["step"] - first["step"]


def timed(fn, steps: int, device: torch.device) -> float:
    """Steps per second of `fn` over `steps` calls after 3 warm-up calls, synchronised on CUDA."""
    for _ in range(3):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def in_process_rates(cfg: Config, steps: int) -> tuple[float, float]:
    """(loop, learner) steps/s of the same config in this process."""
    tc = cfg.train
    device = resolve_device(tc)
    if tc.threads is not None:  # as the trainer process sets them
        torch.set_num_threads(tc.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as ContinualTrainer does
    torch.manual_seed(tc.seed)
    learner = build_learner(cfg.model, tc, device, cfg.augment, channels=cfg.capture.channels)
    optimizer = build_optimizer(learner, tc)
    step = TrainStep(learner, optimizer, tc, device)
    step.mark_good()
    buffer = ReplayBuffer(cfg.buffer, (cfg.capture.height, cfg.capture.width, cfg.capture.channels), device)
    scene = DemoScene(cfg.capture.height, cfg.capture.width, seed=0)
    for seq in range(max(2 * tc.batch_size, buffer.min_fill)):
        buffer.add(Frame(camera_id=0, seq=seq, timestamp=0.05 * seq, image=scene.render(0.05 * seq)))
    sampler = torch.Generator().manual_seed(0)

    def loop_step() -> None:
        images, partners = buffer.sample(tc.batch_size, sampler)
        step(images, partners)

    loop = timed(loop_step, steps, device)
    images, _ = buffer.sample(tc.batch_size, sampler)
    x = step.to_input(images)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16(tc, device) else nullcontext()

    def bare_step() -> None:
        with autocast:
            loss = learner(x, unit_range=True)  # x is uint8 / 255, as the trainer feeds it
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        learner.update_moving_average()

    return loop, timed(bare_step, steps, device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="YAML config (default: the shipped default)")
    parser.add_argument("--size", type=int, default=None, help="capture height = width (default: the config's)")
    parser.add_argument("--seconds", type=float, default=40.0, help="e2e measuring window")
    parser.add_argument("--steps", type=int, default=20, help="timed in-process steps")
    parser.add_argument("--start-timeout", type=float, default=180.0)
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_args()

    overrides = [
        f"wire.endpoint=tcp://127.0.0.1:{free_port()}",
        "wire.publish=null",
        "wire.secret_key=null",
        "wire.authorized_keys=null",
        "export.every_steps=null",
        "buffer.capacity_frames=8192",
        "buffer.capacity_bytes=null",
        *args.overrides,
    ]
    if args.size:
        overrides += [f"capture.height={args.size}", f"capture.width={args.size}"]
    cfg = load_config(args.config, overrides)
    min_fill = min(cfg.buffer.min_fill, 2 * cfg.train.batch_size)
    overrides.append(f"buffer.min_fill={min_fill}")
    cfg = load_config(args.config, overrides)
    tc = cfg.train
    print(
        f"# {cfg.model.encoder} at {cfg.model.image_size} px from {cfg.capture.height}x{cfg.capture.width} frames, "
        f"batch {tc.batch_size}, {tc.optimizer}, device {resolve_device(tc)}, bf16 {use_bf16(tc, resolve_device(tc))}, "
        f"channels_last {tc.channels_last}, buffer {cfg.buffer.device}; torch {torch.__version__}",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    e2e, steps = e2e_rate(args, overrides, work)
    print(
        f"e2e      {e2e:8.3f} steps/s ({e2e * tc.batch_size:.1f} img/s; {steps} steps in the window; logs {work})",
        flush=True,
    )
    loop, bare = in_process_rates(cfg, args.steps)
    print(f"loop     {loop:8.3f} steps/s ({loop * tc.batch_size:.1f} img/s)", flush=True)
    print(f"learner  {bare:8.3f} steps/s ({bare * tc.batch_size:.1f} img/s)", flush=True)
    print(f"ratio e2e / learner = {e2e / bare:.3f} (goal >= 0.8: the trainer is not input-bound)")
    print(f"ratio e2e / loop = {e2e / loop:.3f} (the input path: wire, ingest, status)")
    print(
        f"ratio loop / learner = {loop / bare:.3f} (what TrainStep adds: input conversion, BatchNorm snapshot, "
        f"the NaN guard's loss read)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
