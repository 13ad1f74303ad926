"""Forgetting across rooms, measured as continual-learning papers do (issue 26, Deliver item 2).

The real photos (by default the dev set, `../shared/data/cifar10-dev.tar.gz`, unpacked into a temporary
folder) stream through the product's own learner as 5 "rooms" of 2 classes each (classes in sorted
name order, paired: room 1 = classes 0 and 1, ...; within a room the photos come in a seeded random
order, as a robot looking around one room sees its objects mixed). The learner is the real
`ContinualTrainer` (trainer/continual.py): its ingest thread fills the `ReplayBuffer` with the room's
frames through the configured eviction policy, lossless (ingestion waits for training, as `byol-agent
replay` runs it) at `steps_per_room / frames_per_room` updates per frame, so every room gets exactly
`--steps` BYOL updates. Between rooms the trainer checkpoints (with its replay buffer,
`train.save_buffer=true`) and the next room's trainer resumes from the run directory: weights,
optimizer, buffer, policy state and RNGs carry over, as a robot restarted in the next room would.

After each room the target encoder (`export.weights`) is scored with the library's kNN
(`trainer.feature_probes.knn_top1`: weighted cosine, k = 20, T = 0.07) on every room's classes separately:
bank = that room's train photos, queries = its test photos (2-way, chance 0.5; "task-aware", as in
GEM / Chaudhry et al. 2018). That fills a rooms x rooms table A[i, j] (after room i, room j's classes).
Reported, as in Chaudhry et al. 2018 ("Riemannian walk", eq. 8-9) and CaSSLe (Fini et al. 2022):
- final average accuracy: mean_j A[5, j];
- average forgetting: mean over rooms j = 1..4 of (max_{i<5} A[i, j] - A[5, j]);
- also the 10-way kNN on all classes at the end (bank = all train photos, queries = all test photos).

The replay buffer holds 1,024 frames unless overridden (about one room: a buffer holding the whole stream
could not forget). The reference is the same budget (5 x `--steps` updates, 5,000 frames) on the shuffled
stream: the same photos in one random order, scored after each fifth of it.

    nice -n 10 python benchmarks/bench_forgetting.py --steps 60 --seeds 0 --methods fifo train.batch_size=32
    nice -n 10 python benchmarks/bench_forgetting.py --steps 1500 --seeds 0 1     # every method, a real budget
    python benchmarks/bench_forgetting.py --data DIR ...   # any folder with train/<class>/ and test/<class>/
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Optional, Union

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from agent.core.config import Config, load_config  # noqa: E402
from agent.core.wire import EndOfStream, Frame  # noqa: E402
from trainer.continual import ContinualTrainer  # noqa: E402
from trainer.feature_probes import knn_top1, load_train_test_folder, torch_features  # noqa: E402
from trainer.learner_factory import build_learner  # noqa: E402

ROOMS = 5
DEV_PHOTOS = Path("/work/shared/data/cifar10-dev.tar.gz")  # the dev photos (../shared/data from the main checkout)
# Every method is one policy name (buffer.policy) on the rooms stream, or "shuffled": the reference.
# "NAME+key=value,key=value" adds overrides to a method (e.g. "fifo+buffer.capacity_frames=2048").
DEFAULT_METHODS = ["shuffled", "fifo", "reservoir", "min_redundancy", "stratified"]


class ListInbox:
    """A `FrameInbox` (trainer/ingest.py) over frames held in memory: each frame once, then end-of-stream.

    What the ZeroMQ receiver would hand the ingest thread from a finite capture source, without the
    sockets (the stream here is fixed, and the benchmark measures learning, not transport)."""

    endpoint = "inproc://bench-forgetting"

    def __init__(self, images: np.ndarray, first_seq: int, t0: float) -> None:
        self._images, self._next, self._first_seq, self._t0 = images, 0, first_seq, t0
        self.stats = SimpleNamespace(malformed=0, refused=0)
        self._ended = False

    def recv(self, timeout_s: Optional[float]) -> Optional[Union[Frame, EndOfStream]]:
        if self._next < len(self._images):
            i = self._next
            self._next += 1
            seq = self._first_seq + i
            return Frame(camera_id=0, seq=seq, timestamp=self._t0 + seq / 15.0, image=self._images[i])
        if not self._ended:
            self._ended = True
            return EndOfStream(camera_id=0, seq=self._first_seq + len(self._images), timestamp=time.time())
        time.sleep(min(timeout_s or 0.0, 0.05))
        return None

    def close(self) -> None:
        pass


def prepare_data(spec: str, work: Path) -> Path:
    """A folder with train/ and test/ class subfolders: the dev photos unpacked into `work`, or `spec` itself."""
    if spec == "dev":
        archive = DEV_PHOTOS if DEV_PHOTOS.is_file() else ROOT.parent / "shared" / "data" / DEV_PHOTOS.name
        if not archive.is_file():
            raise SystemExit(f"bench_forgetting: {archive} not found; pass --data DIR (train/ and test/ class folders)")
        with tarfile.open(archive) as tar:
            tar.extractall(work, filter="data")
        return next(p.parent for p in work.rglob("train") if (p.parent / "test").is_dir())
    root = Path(spec)
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise SystemExit(f"bench_forgetting: {root} needs train/<class>/ and test/<class>/ image folders")
    return root


def cpu_s() -> float:
    """User + system CPU seconds of this process so far (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def room_table(encoder: torch.nn.Module, mean, std, data, rooms: list[np.ndarray], k: int) -> tuple[list[float], float]:
    """kNN top-1 of `encoder` (normalised NCHW -> (N, D)) on each room's classes (2-way), and on all classes."""
    feats = torch_features(encoder, data.images, mean, std)
    bank, queries = data.split
    labels = data.labels
    scores = []
    for classes in rooms:
        b = bank[np.isin(labels[bank], classes)]
        q = queries[np.isin(labels[queries], classes)]
        scores.append(knn_top1(feats[b], labels[b], feats[q], labels[q], k=k))
    overall = knn_top1(feats[bank], labels[bank], feats[queries], labels[queries], k=k)
    return scores, overall


def random_init_row(cfg: Config, data, rooms: list[np.ndarray], seed: int) -> tuple[list[float], float]:
    """The same table row for the untrained encoder of this config and seed: what "learnt" is measured against."""
    torch.manual_seed(seed)
    learner = build_learner(cfg.model, cfg.train, "cpu", cfg.augment)
    return room_table(learner.encoder_module(cfg.export.weights), learner.mean, learner.std, data, rooms, cfg.eval.k)


def run_method(
    method: str, data, base_overrides: list[str], config: Optional[str], steps: int, seed: int, work: Path, quiet: bool
) -> dict:
    """One method, one seed: 5 rooms (or the shuffled stream in 5 parts), the table after each."""
    name, _, extra = method.partition("+")
    overrides = list(base_overrides) + [o for o in extra.split(",") if o]
    shuffled = name == "shuffled"
    if not shuffled:
        overrides.append(f"buffer.policy={name}")
    bank = data.split[0]
    labels = data.labels
    classes = sorted(set(labels.tolist()))
    rooms = [np.array(classes[2 * r : 2 * r + 2]) for r in range(ROOMS)]
    rng = np.random.default_rng(seed)
    if shuffled:
        order = rng.permutation(bank)
        parts = np.array_split(order, ROOMS)
    else:
        parts = [rng.permutation(bank[np.isin(labels[bank], room)]) for room in rooms]
    run_dir = work / f"{method.replace('/', '_')}-seed{seed}"
    table, overall, steps_done = [], [], []
    init_scores, init_all = random_init_row(load_config(config, overrides + [f"train.seed={seed}"]), data, rooms, seed)
    start_cpu, start_wall = cpu_s(), time.monotonic()
    seq, t0 = 0, time.time()
    for r, part in enumerate(parts):
        ratio = steps / len(part)
        cfg = load_config(
            config,
            overrides
            + [
                f"train.seed={seed}",
                f"train.max_steps={steps * (r + 1)}",
                f"train.replay_ratio={ratio!r}",
            ],
        )
        inbox = ListInbox(data.images[part], seq, t0)
        seq += len(part)
        stream = open(os.devnull, "w") if quiet else None
        trainer = ContinualTrainer(cfg, run_dir, open_receiver=lambda inbox=inbox: inbox, lossless=True, stream=stream)
        trainer.run(threading.Event())
        if stream is not None:
            stream.close()
        steps_done.append(trainer.step)
        encoder = trainer.learner.encoder_module(cfg.export.weights)
        scores, all_classes = room_table(encoder, trainer.learner.mean, trainer.learner.std, data, rooms, cfg.eval.k)
        table.append(scores)
        overall.append(all_classes)
        print(
            f"  {method} seed {seed} room {r + 1}: step {trainer.step}, kNN per room "
            f"{' '.join(f'{s:.3f}' for s in scores)}, all classes {all_classes:.3f}",
            flush=True,
        )
    a = np.array(table)
    forgetting = float(np.mean([a[:-1, j].max() - a[-1, j] for j in range(ROOMS - 1)]))
    return {
        "method": method,
        "seed": seed,
        "steps": steps_done,
        "table": table,
        "random_init": init_scores,
        "random_init_all_classes": init_all,
        "all_classes": overall,
        "final_average": float(a[-1].mean()),
        "forgetting": forgetting,
        "cpu_s": cpu_s() - start_cpu,
        "wall_s": time.monotonic() - start_wall,
    }


def markdown(results: list[dict]) -> str:
    """The rooms x rooms tables and the summary, as RESULTS.md shows them."""
    lines = [
        "| method | seed | steps | final average (random init) | average forgetting | 10-way kNN at the end "
        "(random init) | CPU s |",
        "|---|---|---|---|---|---|---|",
    ]
    for res in results:
        init = res.get("random_init")
        init_avg = f" ({np.mean(init):.3f})" if init else ""
        init_all = f" ({res['random_init_all_classes']:.3f})" if init else ""
        lines.append(
            f"| {res['method']} | {res['seed']} | {res['steps'][-1]} | {res['final_average']:.3f}{init_avg} | "
            f"{res['forgetting']:.3f} | {res['all_classes'][-1]:.3f}{init_all} | {res['cpu_s']:.0f} |"
        )
    for res in results:
        title = f"{res['method']}, seed {res['seed']}"
        lines += [
            "",
            f"{title} (row: after room i; column: room j's classes, 2-way kNN)",
            "",
            "| after | " + " | ".join(f"room {j + 1}" for j in range(ROOMS)) + " |",
            "|---" * (ROOMS + 1) + "|",
        ]
        for i, row in enumerate(res["table"]):
            lines.append(f"| room {i + 1} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
        if "random_init" in res:
            lines.append("| random init | " + " | ".join(f"{v:.3f}" for v in res["random_init"]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="dev", help="'dev' (the dev photos) or a folder with train/ and test/")
    parser.add_argument("--config", default=None, help="config file (default configs/default.yaml)")
    parser.add_argument("--steps", type=int, default=200, help="BYOL updates per room")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="write the results here too")
    parser.add_argument("--render", type=Path, nargs="+", default=None, help="print the tables of earlier --json files")
    parser.add_argument("overrides", nargs="*", help="config overrides a.b=value for every method")
    args = parser.parse_args()
    if args.render:
        print(markdown([res for path in args.render for res in json.loads(path.read_text())]))
        return
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-forgetting-") as tmp:
        work = Path(tmp)
        folder = prepare_data(args.data, work / "data")
        base = load_config(args.config, list(args.overrides))
        size = base.capture.height
        data = load_train_test_folder(folder, (base.capture.height, base.capture.width), 10**6)
        overrides = [
            f"capture.height={size}",
            f"capture.width={base.capture.width}",
            f"train.threads={args.threads}",
            "train.save_buffer=true",
            "train.probe_data=null",
            "train.checkpoint_every=1000000",
            "export.every_steps=null",
            "export.every_seconds=null",
            "train.metrics_every=1000",
            "buffer.capacity_frames=1024",  # about one room: a buffer that held the whole stream could not forget
        ] + list(args.overrides)
        print(
            f"bench_forgetting: {len(data.split[0])} train / {len(data.split[1])} test photos, "
            f"{ROOMS} rooms of 2 classes, "
            f"{args.steps} steps per room, seeds {args.seeds}, {args.threads} thread(s); "
            f"config {args.config or 'configs/default.yaml'} {' '.join(args.overrides)}",
            flush=True,
        )
        results = []
        for seed in args.seeds:
            for method in args.methods:
                results.append(run_method(method, data, overrides, args.config, args.steps, seed, work, quiet=True))
                res = results[-1]
                print(
                    f"{method} seed {seed}: final average {res['final_average']:.3f}, average forgetting "
                    f"{res['forgetting']:.3f}, 10-way {res['all_classes'][-1]:.3f}, {res['cpu_s']:.0f} CPU s, "
                    f"{res['wall_s']:.0f} s",
                    flush=True,
                )
                if args.json is not None:
                    args.json.write_text(json.dumps(results, indent=1))
        print()
        print(markdown(results))


if __name__ == "__main__":
    main()
