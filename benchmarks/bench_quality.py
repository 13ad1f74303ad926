"""Quality on real photos under a CPU budget: the product from its CLI vs random init vs byol-pytorch 0.9.1.

What a user does, measured: `byol-agent capture --source FOLDER/train` streams the photos
(unlabelled, looped, shuffled each pass) over ZeroMQ into `byol-agent train` running the shipped
config; the trainer is stopped (SIGINT, final checkpoint) when its process has used the CPU budget
(user + system seconds of all its threads, read from /proc); `byol-agent export` publishes the
ONNX encoder. Every `--every` CPU seconds the trainer is paused (SIGSTOP, so its clock stands
still and nothing else competes with it), its newest checkpoint is exported the same way and
scored, and it is resumed (SIGCONT): the curve over the budget.

Scores, as `byol-agent eval` computes them on a folder with train/ and test/ halves: weighted
cosine kNN top-1 (k = 20, T = 0.07) with FOLDER/train as the labelled bank and FOLDER/test as
queries, and a logistic-regression probe fit on train, scored on test. References, same data:

- random init: the same architecture, stem and input size with the run's initial weights (seeded
  by `train.seed`), cut at the same hidden layer, as `byol-agent eval` builds it from the manifest;
- byol-pytorch 0.9.1 as its README uses it (`BYOL(net, image_size, hidden_layer)`, Adam 3e-4),
  wrapping that same initial network, trained in this process on the same photos (fitted to the
  capture size as capture fits them, shuffled) for the same CPU budget with the same thread count,
  scored at the same marks.

Data: by default the development photos (`../shared/data/cifar10-dev.tar.gz`, real 32x32 photos,
10 classes, 5,000 train / 2,000 test), unpacked into a temporary folder; `--data DIR` takes any
folder with `train/<class>/` and `test/<class>/`; `--data procedural` renders the synthetic object
stream (benchmarks/procedural_objects.py) into such a folder.

    python benchmarks/bench_quality.py                          # dev photos, 1,200 CPU s, seeds 0 and 1
    python benchmarks/bench_quality.py --data procedural        # the synthetic object stream
    python benchmarks/bench_quality.py --budget 300 --seeds 0 --learners ours train.lr=1e-3
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from agent.core.config import Config, EvalConfig, load_config  # noqa: E402
from agent.core.frames import fit_frame  # noqa: E402
from agent.robot.sources import SourceExhausted, open_source  # noqa: E402
from export.evaluate import evaluate_export  # noqa: E402
from trainer.backbone import Backbone  # noqa: E402
from trainer.encoders import build_encoder  # noqa: E402
from trainer.feature_probes import LabelledImages, evaluate_features, load_train_test_folder, torch_features  # noqa: E402
from trainer.normalise import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

DEV_PHOTOS = ROOT.parent / "shared" / "data" / "cifar10-dev.tar.gz"
CLI = [sys.executable, "-m", "agent.cli"]


# --------------------------------------------------------------------------- data


def prepare_data(spec: str, work: Path, size: int, seed: int) -> Path:
    """A folder with train/ and test/ class subfolders: the dev photos, procedural objects, or `spec` itself."""
    if spec == "dev":
        if not DEV_PHOTOS.is_file():
            raise SystemExit(f"bench_quality: {DEV_PHOTOS} not found; pass --data DIR (train/ and test/ class folders)")
        with tarfile.open(DEV_PHOTOS) as tar:
            tar.extractall(work, filter="data")
        found = [p.parent for p in work.rglob("train") if (p.parent / "test").is_dir()]
        return found[0]
    if spec == "procedural":
        from procedural_objects import write_folders

        return write_folders(work / "procedural", 5000, 2000, size, seed)
    root = Path(spec)
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise SystemExit(f"bench_quality: {root} needs train/<class>/ and test/<class>/ image folders")
    return root


def stream_frames(folder: Path, cfg: Config) -> np.ndarray:
    """Every image of `folder` as capture stores it (read by the capture source, fitted to the capture size)."""
    source = open_source(str(folder), cfg.capture)
    source.connect()
    frames = []
    try:
        while True:
            frames.append(fit_frame(source.read(), cfg.capture.height, cfg.capture.width, cfg.capture.resize))
    except SourceExhausted:
        return np.stack(frames)


# --------------------------------------------------------------------------- the product, from its CLI


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process, all threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CliRun:
    """`byol-agent train` fed by `byol-agent capture --source FOLDER/train`, paused to be scored."""

    def __init__(
        self,
        work: Path,
        source: str,
        shuffle: bool,
        config: Optional[str],
        overrides: list[str],
        seed: int,
        threads: int,
    ):
        self.run_dir, self.export_dir = work / f"run-seed{seed}", work / f"exports-seed{seed}"
        self.config = ["--config", config] if config else []
        wire = [f"wire.endpoint=tcp://127.0.0.1:{free_port()}", "wire.publish=null"]
        self.overrides = list(overrides) + wire + [f"train.seed={seed}", f"train.threads={threads}"]
        self.logs = [open(work / f"{name}-seed{seed}.log", "w") for name in ("trainer", "capture")]
        self.paused_s, self._paused_at = 0.0, 0.0
        self._trained_at: Optional[float] = None
        self.trainer = subprocess.Popen(
            CLI + ["train", "--run-dir", str(self.run_dir)] + self.config + self.overrides,
            stdout=self.logs[0],
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        capture = ["capture.loop_video=true", f"capture.shuffle={str(shuffle).lower()}"]
        self.capture = subprocess.Popen(
            CLI + ["capture", "--source", source] + self.config + self.overrides + capture,
            stdout=self.logs[1],
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def cpu_s(self) -> float:
        if self.trainer.poll() is not None:
            raise SystemExit(
                f"bench_quality: the trainer exited with {self.trainer.returncode}; see {self.logs[0].name}"
            )
        return process_cpu_s(self.trainer.pid)

    def wall_s(self) -> float:
        """Wall seconds since the trainer's first update (its metrics.jsonl has a training line), less the
        time it spent paused for scoring; 0 until then (start-up and the buffer's first fill not counted)."""
        self.cpu_s()  # fails the same way when the trainer has exited
        if self._trained_at is None:
            metrics = self.run_dir / "metrics.jsonl"
            text = metrics.read_text() if metrics.exists() else ""
            if '"loss"' not in text:
                return 0.0
            self._trained_at = time.monotonic()
        return time.monotonic() - self._trained_at - self.paused_s

    def export(self) -> Path:
        """The newest checkpoint → ONNX through `byol-agent export`; returns the export directory."""
        subprocess.run(
            CLI
            + ["export", "--run-dir", str(self.run_dir), "--out", str(self.export_dir)]
            + self.config
            + self.overrides,
            check=True,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        return self.export_dir

    def pause(self) -> None:
        self.trainer.send_signal(signal.SIGSTOP)
        self._paused_at = time.monotonic()

    def resume(self) -> None:
        self.trainer.send_signal(signal.SIGCONT)
        self.paused_s += time.monotonic() - self._paused_at

    def stop(self) -> None:
        """SIGINT both (the trainer writes its final checkpoint), then wait."""
        for proc in (self.capture, self.trainer):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in (self.trainer, self.capture):
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in self.logs:
            log.close()


# --------------------------------------------------------------------------- byol-pytorch, in this process


@dataclass
class InProcess:
    """A learner trained here, one batch at a time, on its own process-CPU clock."""

    step: Callable[[torch.Tensor], float]
    encoder: nn.Module
    frames: np.ndarray
    batch_size: int
    seed: int
    cpu: float = 0.0
    steps: int = 0
    last_loss: float = float("nan")

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self._order = self._rng.permutation(len(self.frames))
        self._cursor = 0

    def train_until(self, cpu_budget_s: float) -> None:
        while self.cpu < cpu_budget_s:
            started = time.process_time()
            if self._cursor + self.batch_size > len(self._order):
                self._order, self._cursor = self._rng.permutation(len(self.frames)), 0
            idx = self._order[self._cursor : self._cursor + self.batch_size]
            self._cursor += self.batch_size
            self.last_loss = self.step(torch.from_numpy(self.frames[idx]).permute(0, 3, 1, 2).float().div_(255.0))
            self.cpu += time.process_time() - started
            self.steps += 1


def initial_network(cfg: Config) -> nn.Module:
    """The network `build_learner` starts from under `train.seed` (the encoder is the first thing it draws)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        return build_encoder(cfg.model)


def byol_pytorch(cfg: Config, frames: np.ndarray) -> InProcess:
    from byol_pytorch import BYOL as TheirBYOL

    net = initial_network(cfg)
    learner = TheirBYOL(net, image_size=cfg.model.image_size, hidden_layer=cfg.model.hidden_layer)
    optimizer = torch.optim.Adam(learner.parameters(), lr=3e-4)

    def step(batch: torch.Tensor) -> float:
        loss = learner(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        learner.update_moving_average()
        return loss.item()

    return InProcess(step, Backbone(net, cfg.model.hidden_layer), frames, cfg.train.batch_size, cfg.train.seed)


def score_module(module: nn.Module, data: LabelledImages, eval_cfg: EvalConfig, seed: int) -> tuple[float, float]:
    was_training = module.training
    feats = torch_features(module.eval(), data.images, IMAGENET_MEAN, IMAGENET_STD)
    module.train(was_training)
    return evaluate_features(feats, data.labels, *data.split, eval_cfg.k, seed)


# --------------------------------------------------------------------------- run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default="dev", help="'dev' (the shared dev photos), 'procedural', or a folder with train/ and test/"
    )
    parser.add_argument(
        "--budget", type=float, default=1200.0, help="trainer CPU seconds (all threads) per learner and seed"
    )
    parser.add_argument("--every", type=float, default=200.0, help="score every this many CPU seconds")
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="budget in the trainer's CPU seconds, or wall seconds from its first update (on a GPU "
        "the trainer's CPU time says little about its work)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--max-images", type=int, default=100_000, help="images scored per half (train / test)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--learners", default="ours,byol-pytorch", help="comma list of ours, byol-pytorch")
    parser.add_argument("--config", default=None, help="our YAML config (default: the shipped default)")
    parser.add_argument(
        "--order",
        choices=("shuffled", "class"),
        default="shuffled",
        help="our stream: shuffled each pass, or the folder's sorted order (class after class, as a robot "
        "moving from room to room sees it)",
    )
    parser.add_argument(
        "--source",
        default=None,
        help="our capture source instead of DATA/train, e.g. a video made by make_pan_video.py",
    )
    parser.add_argument("--work", default=None, help="keep run directories and logs here (default: a temp folder)")
    parser.add_argument("overrides", nargs="*", help="our config overrides, key=value")
    args = parser.parse_args(argv)
    learners = set(args.learners.split(","))
    torch.set_num_threads(args.threads)

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    base = load_config(args.config, list(args.overrides))
    eval_cfg = base.eval.model_copy(update={"max_images": args.max_images})
    data_dir = prepare_data(args.data, work, base.model.image_size, seed=0)
    data = load_train_test_folder(data_dir, base.model.image_size, eval_cfg.max_images)
    n_bank, n_query = (len(s) for s in data.split)
    print(
        f"data {args.data} ({data_dir}): {n_bank} bank / {n_query} query images, {len(data.classes)} classes; "
        f"encoder {base.model.encoder} stem {base.model.stem} at {base.model.image_size} px, batch "
        f"{base.train.batch_size}, "
        f"{base.train.optimizer} lr {base.train.lr:g} warm-up {base.train.lr_warmup_steps}, "
        f"tau {base.train.tau_schedule} {base.train.tau_base}->{base.train.tau_final}; budget {args.budget:g} "
        f"{args.clock} s, "
        f"{args.threads} threads; stream {args.source or 'DATA/train'} {args.order}, buffer {base.buffer.policy} "
        f"{base.buffer.capacity_frames} frames, temporal positives {base.buffer.temporal_positives}; work dir {work}",
        flush=True,
    )
    frames = stream_frames(data_dir / "train", base) if "byol-pytorch" in learners else None
    marks = [min(args.budget, args.every * i) for i in range(1, int(np.ceil(args.budget / args.every)) + 1)]

    finals: dict[str, list[tuple[float, float]]] = {}
    for seed in args.seeds:
        cfg = load_config(args.config, list(args.overrides) + [f"train.seed={seed}"])
        random_scores = score_module(Backbone(initial_network(cfg), cfg.model.hidden_layer), data, eval_cfg, seed)
        finals.setdefault("random init", []).append(random_scores)
        print(f"\nseed {seed}: random init kNN {random_scores[0]:.3f} linear {random_scores[1]:.3f}", flush=True)
        if "ours" in learners:
            source = args.source or str(data_dir / "train")
            run = CliRun(work, source, args.order == "shuffled", args.config, list(args.overrides), seed, args.threads)
            started = time.perf_counter()
            spent = run.cpu_s if args.clock == "cpu" else run.wall_s
            try:
                for mark in marks:
                    while spent() < mark:
                        time.sleep(0.5)
                    if mark == marks[-1]:
                        run.stop()
                    else:
                        run.pause()
                    result = evaluate_export(run.export(), data, eval_cfg, seed=seed, reference=False)
                    print(
                        f"  ours          {mark:6.0f} {args.clock} s  step {result.step:5d}  kNN "
                        f"{result.knn_top1:.3f}  "
                        f"linear {result.linear_top1:.3f}  (wall {time.perf_counter() - started:.0f} s)",
                        flush=True,
                    )
                    if mark != marks[-1]:
                        run.resume()
            finally:
                run.stop()
            finals.setdefault("ours", []).append((result.knn_top1, result.linear_top1))
        if "byol-pytorch" in learners:
            theirs = byol_pytorch(cfg, frames)
            for mark in marks:
                theirs.train_until(mark)
                knn, linear = score_module(theirs.encoder, data, eval_cfg, seed)
                print(
                    f"  byol-pytorch  {mark:6.0f} CPU s  step {theirs.steps:5d}  kNN {knn:.3f}  linear {linear:.3f}",
                    flush=True,
                )
            finals.setdefault("byol-pytorch", []).append((knn, linear))

    print(f"\nfinal, {args.budget:g} {args.clock} s, seeds {args.seeds}:")
    print(
        f"{'encoder':14s}"
        + "".join(f"{'kNN s' + str(s):>10s}{'lin s' + str(s):>10s}" for s in args.seeds)
        + f"{'kNN mean':>10s}"
    )
    for name, rows in finals.items():
        cells = "".join(f"{knn:10.3f}{linear:10.3f}" for knn, linear in rows)
        print(f"{name:14s}{cells}{np.mean([r[0] for r in rows]):10.3f}")
    if "ours" in finals:
        gaps = [o[0] - r[0] for o, r in zip(finals["ours"], finals["random init"])]
        print(f"ours minus random init, kNN per seed: {', '.join(f'{g:+.3f}' for g in gaps)}")
        if "byol-pytorch" in finals:
            gaps = [o[0] - t[0] for o, t in zip(finals["ours"], finals["byol-pytorch"])]
            print(f"ours minus byol-pytorch, kNN per seed: {', '.join(f'{g:+.3f}' for g in gaps)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
