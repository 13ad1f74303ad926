"""CPU seconds of one BYOL step in fp32 against bf16 autocast, for a config's learner (issue 26 item 3).

The learner is the product's (`build_learner` / `build_optimizer` from the config), stepped on random frames the
size the config trains at, the way the trainer's TrainStep runs it (autocast around the forward, the optimizer
step and EMA update outside it). Prints each setting's median CPU seconds per step (process CPU time: the same
on a loaded machine as on an idle one, unlike wall time) and its ratio to fp32 measured in the same run.

    python benchmarks/bench_cpu_precision.py --config configs/robot-resnet18-cpu.yaml --threads 1
    python benchmarks/bench_cpu_precision.py                 # configs/default.yaml (tiny_cnn)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.core.config import load_config  # noqa: E402
from trainer.learner_factory import build_learner, build_optimizer  # noqa: E402
from trainer.train_step import native_cpu_bf16  # noqa: E402

SETTINGS = {  # name: (train.precision, train.channels_last)
    "fp32": ("fp32", False),
    "fp32 channels_last": ("fp32", True),
    "bf16 channels_last": ("bf16", True),
}


def step_seconds(config: str | None, overrides: list[str], precision: str, channels_last: bool, steps: int) -> float:
    """Median process CPU seconds of one step after 2 warm-up steps."""
    cfg = load_config(config, [*overrides, f"train.channels_last={str(channels_last).lower()}", "train.device=cpu"])
    torch.manual_seed(0)
    learner = build_learner(cfg.model, cfg.train, "cpu", cfg.augment)
    optimizer = build_optimizer(learner, cfg.train)
    size = cfg.model.image_size
    frames = torch.rand(cfg.train.batch_size, 3, size, size)
    times = []
    for i in range(steps + 2):
        began = time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = learner(frames)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        learner.update_moving_average()
        if i >= 2:
            times.append(time.process_time() - began)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, list(args.overrides))
    print(
        f"bench_cpu_precision: {cfg.model.encoder} {cfg.model.image_size} px, batch {cfg.train.batch_size}, "
        f"{args.threads} thread(s), native bf16: {native_cpu_bf16()}, torch {torch.__version__}",
        flush=True,
    )
    base = None
    for name, (precision, channels_last) in SETTINGS.items():
        seconds = step_seconds(args.config, list(args.overrides), precision, channels_last, args.steps)
        base = base or seconds
        print(f"{name:20s} {seconds:.3f} CPU s a step, {base / seconds:.2f}x fp32", flush=True)


if __name__ == "__main__":
    main()
