"""Per-step cost of the TensorBoard metrics sink at the default config: training with metrics.sinks
[jsonl, tensorboard] (the default) against [jsonl] (TensorBoard off), in one run.

The trainer's own parts at configs/default.yaml (tiny_cnn, 32 px, batch 128, metrics every 10
steps, a view grid every 500): a `ContinualTrainer` built but not started, its replay buffer filled
with demo-scene frames, and the loop body that matters here run by hand: one BYOL update, then
`RunMonitor.stepped` (the metrics record every `train.metrics_every` steps, the view grid every
`metrics.images_every_steps`) and `RunMonitor.status`. Rounds alternate between the two sink
settings (same trainer, so same weights and data); each round times `--steps` steps, in wall time and
in this process's CPU time (steadier on a shared machine: the sink writes on the training thread, so
its cost is in it). Prints the median step time of each setting and their ratio (median of per-round
ratios), and separately the sink's own costs timed directly (one record, one view grid made and
written) amortised per step.

    nice -n 10 python benchmarks/bench_metrics_sinks.py --rounds 6 --steps 40 --threads 2
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.core.config import load_config  # noqa: E402
from agent.core.demo_scene import DemoScene  # noqa: E402
from agent.core.wire import Frame  # noqa: E402
from trainer.continual import ContinualTrainer  # noqa: E402
from trainer.metrics import MetricsWriter  # noqa: E402
from trainer.run_monitor import RunMonitor  # noqa: E402

OFF, ON = ("jsonl",), ("jsonl", "tensorboard")


def build(run_dir: Path, threads: int) -> ContinualTrainer:
    cfg = load_config(None, [f"train.threads={threads}", "train.device=cpu"])
    trainer = ContinualTrainer(cfg, run_dir, open_receiver=lambda: None)  # never run: no frames are received
    scene = DemoScene(cfg.capture.height, cfg.capture.width, seed=1)
    for seq in range(cfg.buffer.capacity_frames // 4):
        trainer.buffer.add(Frame(camera_id=seq % 2, seq=seq, timestamp=seq / 15, image=scene.render(seq / 15)))
    return trainer


def monitor(trainer: ContinualTrainer, sinks: tuple[str, ...], run_dir: Path) -> RunMonitor:
    writer = MetricsWriter(run_dir, stream=io.StringIO(), sinks=sinks, start_step=trainer.step)
    return RunMonitor(
        writer,
        trainer.cfg.train,
        train_step=trainer.train_step,
        buffer=trainer.buffer,
        state=trainer.state,
        metrics_cfg=trainer.cfg.metrics,
        preview=trainer._view_grid,
    )


def round_time(trainer: ContinualTrainer, sinks: tuple[str, ...], run_dir: Path, steps: int) -> tuple[float, float]:
    """(wall s, this process's CPU s) per step over `steps` steps of the loop body with `sinks`."""
    mon = monitor(trainer, sinks, run_dir)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        mon.stepped(trainer._train_step())
        mon.status("training")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    mon.metrics.close()
    return wall / steps, cpu / steps


def direct_costs(trainer: ContinualTrainer, run_dir: Path, reps: int = 20) -> tuple[float, float, float]:
    """(s per training-window record, s per view grid made, s per grid written) with the TensorBoard sink alone."""
    mon = monitor(trainer, ("tensorboard",), run_dir)
    fields = mon._fields("training")
    fields.update(loss=1.0, frames_per_camera={0: 100, 1: 100}, buffer_per_camera={0: 50, 1: 50})
    started = time.perf_counter()
    for _ in range(reps * 10):
        mon.metrics.log(fields)
    record_s = (time.perf_counter() - started) / (reps * 10)
    started = time.perf_counter()
    for _ in range(reps):
        grid = trainer._view_grid()
    grid_s = (time.perf_counter() - started) / reps
    started = time.perf_counter()
    for step in range(reps):
        mon.metrics.image("views", step, grid)
    image_s = (time.perf_counter() - started) / reps
    mon.metrics.close()
    return record_s, grid_s, image_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=40, help="steps per round")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build(Path(tmp) / "run", args.threads)
        cfg = trainer.cfg
        print(
            f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads; "
            f"default config: {cfg.model.encoder} {cfg.model.image_size} px, batch {cfg.train.batch_size}, "
            f"metrics every {cfg.train.metrics_every} steps, view grid every {cfg.metrics.images_every_steps}"
        )
        for sinks in (OFF, ON):
            round_time(trainer, sinks, Path(tmp) / "warm", 3)  # warm-up (and the sinks' imports)
        times: dict[tuple[str, ...], list[tuple[float, float]]] = {OFF: [], ON: []}
        for r in range(args.rounds):
            for sinks in (OFF, ON) if r % 2 == 0 else (ON, OFF):
                times[sinks].append(round_time(trainer, sinks, Path(tmp) / "run", args.steps))
            (w0, c0), (w1, c1) = times[OFF][-1], times[ON][-1]
            print(
                f"round {r + 1}: off {w0 * 1e3:.1f} ms/step ({c0 * 1e3:.1f} CPU), on {w1 * 1e3:.1f} ({c1 * 1e3:.1f} "
                "CPU)"
            )
        off = [w for w, _ in times[OFF]]
        for k, what in ((0, "wall"), (1, "CPU")):
            a, b = [t[k] for t in times[OFF]], [t[k] for t in times[ON]]
            ratios = [y / x for x, y in zip(a, b)]
            print(
                f"{what}: median step off {statistics.median(a) * 1e3:.1f} ms, on {statistics.median(b) * 1e3:.1f} ms; "
                f"on/off = {statistics.median(ratios):.3f} (median of per-round ratios; "
                f"{statistics.median(b) / statistics.median(a):.3f} ratio of medians)"
            )
        record_s, grid_s, image_s = direct_costs(trainer, Path(tmp) / "direct")
        per_step = record_s / cfg.train.metrics_every + (grid_s + image_s) / cfg.metrics.images_every_steps
        print(
            f"direct: {record_s * 1e6:.0f} us per record, view grid {grid_s * 1e3:.1f} ms to make + "
            f"{image_s * 1e3:.1f} ms to write; amortised {per_step * 1e6:.0f} us per step = "
            f"{per_step / statistics.median(off):.5f} of the median step"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
