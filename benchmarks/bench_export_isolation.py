"""What keeping a dynamo export away from the training thread costs: a child process vs a lock.

    python benchmarks/bench_export_isolation.py                      # tiny_cnn and resnet18 at 64 px
    python benchmarks/bench_export_isolation.py --encoders tiny_cnn --rounds 1

The dynamo exporter's tracing state is process-global, so an export beside training
either runs in a child process (what BackgroundExporter does) or holds a lock that stops training
while it traces (the alternative). Per encoder and round, with one BYOL training loop (batch 32,
32 px views of the encoder's image size, Adam) on the main thread:

  baseline  training steps/s with no export running
  lock      the in-process dynamo export's time: training would stand still for all of it
  alone     the same export in a spawned child with no training (the child's start-up cost shows)
  child     the same export in a spawned child (export/isolated.py) while training steps on:
            its wall time, and the training steps lost against the baseline rate in that time
            (the child shares the CPU with training; on a GPU box it would share nothing)

Printed: steps lost per export, lock vs child, and their ratio (child / lock).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.core.config import ExportConfig, ModelConfig
from export.onnx_export import PreprocessedEncoder, export_graph, input_spec
from trainer.byol import BYOL
from trainer.encoders import build_encoder

HIDDEN = {"tiny_cnn": "avgpool", "resnet18": "avgpool"}


def training_loop(learner: BYOL, stop: threading.Event, counter: list[int]) -> None:
    opt = torch.optim.Adam(learner.parameters(), lr=3e-4)
    images = torch.rand(32, 3, 40, 40)
    while not stop.is_set():
        loss = learner(images)
        opt.zero_grad()
        loss.backward()
        opt.step()
        learner.update_moving_average()
        counter[0] += 1


def steps_during(learner: BYOL, work: Optional[Callable[[], object]], seconds: float = 0.0) -> tuple[int, float]:
    """Training steps done on this thread while `work()` runs on another (or for `seconds`), and the wall time."""
    stop, counter = threading.Event(), [0]
    done = threading.Event()

    def run() -> None:
        try:
            if work is not None:
                work()
            else:
                time.sleep(seconds)
        finally:
            done.set()
            stop.set()

    start = time.monotonic()
    worker = threading.Thread(target=run)
    worker.start()
    training_loop(learner, stop, counter)
    worker.join()
    return counter[0], time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", nargs="+", default=["tiny_cnn", "resnet18"])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ExportConfig(exporter="dynamo")
    print(f"torch {torch.__version__}, {args.threads} threads, image size {args.size}, dynamo exporter")
    for name in args.encoders:
        model_cfg = ModelConfig(encoder=name, image_size=args.size, hidden_layer=HIDDEN.get(name, "avgpool"))
        torch.manual_seed(0)
        net = build_encoder(model_cfg)
        learner = BYOL(
            net,
            image_size=args.size,
            hidden_layer=model_cfg.hidden_layer,
            projection_hidden_size=512,
            projection_size=128,
        )
        spec = input_spec(cfg.input_format, args.size, learner.mean, learner.std)
        wrapped = PreprocessedEncoder(learner.encoder_module("online"), learner.mean, learner.std, cfg.input_format)
        lost_lock, lost_child = [], []
        for r in range(args.rounds):
            base_steps, base_s = steps_during(learner, None, 10.0)
            rate = base_steps / base_s
            start = time.monotonic()
            export_graph(wrapped, spec, cfg)  # in-process, training paused: what a lock would cost
            lock_s = time.monotonic() - start
            start = time.monotonic()
            export_graph(wrapped, spec, cfg, beside_training=True)  # the child alone: its fixed start-up cost shows
            alone_s = time.monotonic() - start
            child_steps, child_s = steps_during(
                learner, lambda w=wrapped, s=spec: export_graph(w, s, cfg, beside_training=True)
            )
            lost_lock.append(rate * lock_s)
            lost_child.append(max(0.0, rate * child_s - child_steps))
            print(
                f"{name} round {r}: baseline {rate:.2f} steps/s; lock: trace {lock_s:.1f} s = {rate * lock_s:.1f} "
                f"steps stalled; child alone {alone_s:.1f} s; child beside training: {child_s:.1f} s wall, "
                f"{child_steps} steps done, {lost_child[-1]:.1f} steps lost"
            )
        lock_med, child_med = statistics.median(lost_lock), statistics.median(lost_child)
        print(
            f"{name}: steps lost per export, lock {lock_med:.1f} vs child {child_med:.1f} "
            f"(child/lock {child_med / max(lock_med, 1e-9):.2f})"
        )


if __name__ == "__main__":
    main()
