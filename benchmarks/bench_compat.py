"""Does a policy head fit on version 1 keep working across hot swaps? Raw vs mapped embeddings.

One continual run per labelled stream (scikit-learn's digits; the procedural demo objects): our
BYOL learner (`trainer.learner_factory.build_learner`, tiny_cnn) trains in-process and publishes a version
with the real exporter (`export.exporter.export_encoder`, calibration set, ridge maps) every N steps
into a temp dir. A linear policy head (standardise + logistic regression) is fit once on version
1's embeddings of the head-train split; for every later version, on the test split:
  (a) raw        the head on that version's own embeddings (today's swap)
  (b) mapped     the head on its embeddings mapped into version 1's space:
                   chained  the per-hop maps to the previous version as published, composed
                   pinned   what a HotEncoder pinned to version 1 serves (`compose_to`): a runtime pin on
                            version 1 is written before version 2, so the exporter also fits each version
                            straight into version 1's space, on the calibration set as it stands then
                            (default size 1024, grown from each export's 256 buffer frames)
                 and offline variants of the direct map: Procrustes on the final calibration set, and
                 ridge on the set's first 256 frames (the set of the old default size)
  (c) refit      a head refit on that version (the upper bound)
plus each map's held-out R², CKA to the previous and to version 1, and the per-call cost of the map
in a pinned HotEncoder. Goal: (b) ≥ 0.95 × version 1's accuracy at every version, > (a).

    python benchmarks/bench_compat.py            # 12 versions x 60 steps on each stream
    python benchmarks/bench_compat.py --quick    # 10 versions x 20 steps, digits only

With `--data DIR` (a folder with train/<class>/ and test/<class>/ images; "dev" unpacks the dev photos,
../shared/data/cifar10-dev.tar.gz, into a temp folder) it runs the photos as the main job runs them
(`run_photos`): the real `ContinualTrainer` (configs/default.yaml, or `--config`) ingests train/ as an
unlabelled stream (lossless, looping it as needed) and its in-process `BackgroundExporter` publishes a
version every `export.every_steps` steps; two product `HotEncoder`s watch the export directory, one
raw and one `compatible_with=1` (its pin is written before version 1 exists, as a policy started with
the robot does), and every version they serve embeds the photos. A linear head (standardise + logistic
regression) is fit once on version 1's embeddings of train/ and scored on test/ for every version:
raw, and through the pinned encoder's map, each as a ratio to version 1; the kNN of each version's
raw embeddings (bank train/, queries test/) shows what the encoder itself learns. The drift gate is
off (`export.min_compatibility=null`) so that every version is served and measured; each version's
held-out R² into version 1's space is printed, and the gate (default 0.9) refuses those below it. `--distill W`
sets `train.compat_distill=W` (trainer/snapshot_distill.py); several values compare in one run:

    nice -n 10 python benchmarks/bench_compat.py --data dev --distill 0 1 --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compat_photos import report_photos, run_photos  # noqa: E402

from agent.core.config import Config, ExportConfig  # noqa: E402
from agent.robot.runtime import HotEncoder  # noqa: E402
from benchmarks.procedural_objects import render_objects  # noqa: E402
from export.calibration import CALIBRATION_NAME, embed_file  # noqa: E402
from export.embedding_maps import LinearMap, fit_compat, linear_cka  # noqa: E402
from export.exporter import export_encoder  # noqa: E402
from export.manifest import manifest_filename, read_manifest  # noqa: E402
from export.map_files import compose_to, read_map  # noqa: E402
from export.pins import write_pin  # noqa: E402
from export.publish import Publisher  # noqa: E402
from trainer.feature_probes import load_digits  # noqa: E402
from trainer.learner_factory import build_learner, build_optimizer  # noqa: E402
from trainer.train_step import TrainStep  # noqa: E402

SIZE = 32
# offline direct maps into version 1's space: (method, ridge, calibration frames used: None = all)
OFFLINE = {"procrustes": ("procrustes", 0.0, None), "ridge, 256 frames": ("ridge", 1e-3, 256)}


def stream(name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB (N, 32, 32, 3) images and int labels."""
    if name == "digits":
        data = load_digits(SIZE)
        return data.images, data.labels
    images, labels = render_objects(1600, SIZE, seed=seed, places=4)
    return images, labels


def config(seed: int) -> Config:
    return Config.model_validate(
        {
            "model": {"encoder": "tiny_cnn", "image_size": SIZE, "projection_size": 64, "projection_hidden_size": 256},
            "train": {
                "device": "cpu",
                "batch_size": 64,
                "lr": 1e-3,
                "seed": seed,
                "tau_warmup_steps": 0,
                "channels_last": False,
            },
            "augment": {"hue": 0.0, "saturation": 0.0, "grayscale_p": 0.0},
        }
    )


def run_stream(name: str, versions: int, steps: int, seed: int, work: Path) -> dict:
    images, labels = stream(name, seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    half = len(order) // 2
    train_idx, test_idx = order[:half], order[half:]
    cfg = config(seed)
    learner = build_learner(cfg.model, cfg.train, "cpu", cfg.augment)
    step = TrainStep(learner, build_optimizer(learner, cfg.train), cfg.train, torch.device("cpu"))
    export_cfg = ExportConfig(keep=1000, min_compatibility=None, compat_map="ridge")  # calibration_frames: the default
    export_dir = work / name
    publisher = Publisher(export_dir, export_cfg.keep)
    pool = torch.from_numpy(images[train_idx])  # the unlabelled stream the learner sees
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for version in range(1, versions + 1):
        for _ in range(steps):  # version 1 too is published after training, as the trainer's first export is
            step(pool[torch.randint(0, len(pool), (cfg.train.batch_size,), generator=gen)])
        buffer_frames = images[train_idx[rng.choice(half, 256, replace=False)]]  # as the trainer samples the buffer
        export_encoder(
            step.step,
            learner.encoder_module("target"),
            buffer_frames,
            export_cfg=export_cfg,
            model_cfg=cfg.model,
            publisher=publisher,
            mean=learner.mean,
            std=learner.std,
        )
        if version == 1:
            write_pin(export_dir, 1)  # the policy head is fit on version 1: a runtime pinned to it
    train_s = time.perf_counter() - t0

    calibration = np.load(export_dir / CALIBRATION_NAME)
    emb_train, emb_test, emb_cal, manifests = {}, {}, {}, {}
    for v in range(1, versions + 1):
        m = read_manifest(export_dir / manifest_filename(v))
        manifests[v] = m
        model = export_dir / m.model_file
        emb_train[v] = embed_file(model, m.input, m.output_name, images[train_idx])
        emb_test[v] = embed_file(model, m.input, m.output_name, images[test_idx])
        emb_cal[v] = embed_file(model, m.input, m.output_name, calibration)

    head = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(emb_train[1], labels[train_idx])
    y = labels[test_idx]
    acc1 = head.score(emb_test[1], y)
    chained: LinearMap | None = None
    rows = []
    for v in range(2, versions + 1):
        maps_to, hop = read_map(export_dir, manifests[v])  # as published: into the previous version's space
        assert maps_to == v - 1
        chained = hop if chained is None else hop.then(chained)
        pinned = compose_to(export_dir, v, 1)  # what a runtime pinned to version 1 serves
        offline = {
            key: fit_compat(emb_cal[v][:frames], emb_cal[1][:frames], method, strength).linear
            for key, (method, strength, frames) in OFFLINE.items()
        }
        refit = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(emb_train[v], labels[train_idx])
        compat = manifests[v].raw["compat"]
        direct = {d["maps_to"]: d for d in compat.get("direct", [])}
        rows.append(
            {
                "version": v,
                "step": manifests[v].step,
                "r2": compat["r2"],
                "r2_v1": direct[1]["r2"] if 1 in direct else compat["r2"],
                "fit_frames": (direct[1] if 1 in direct else compat)["fit_frames"],
                "cka_prev": compat["cka"],
                "cka_v1": linear_cka(emb_test[v], emb_test[1]),
                "raw": head.score(emb_test[v], y),
                "chained": head.score(chained.apply(emb_test[v]), y),
                "pinned": head.score(pinned.apply(emb_test[v]), y),
                **{key: head.score(offline[key].apply(emb_test[v]), y) for key in OFFLINE},
                "refit": refit.score(emb_test[v], y),
            }
        )
    cost = map_cost(export_dir, images[test_idx[:1]])
    return {
        "name": name,
        "acc1": acc1,
        "rows": rows,
        "train_s": train_s,
        "dim": manifests[1].output_dim,
        "calibration": len(calibration),
        "cost": cost,
        "n_train": len(train_idx),
        "n_test": len(test_idx),
    }


def map_cost(export_dir: Path, frame: np.ndarray, calls: int = 2000) -> dict:
    """Median embed() latency at batch 1, unpinned vs pinned to version 1 (interleaved blocks), and
    the map's own cost (LinearMap.apply on one embedding)."""
    raw = HotEncoder(export_dir, providers="cpu", threads=1, wait=False)
    pinned = HotEncoder(export_dir, providers="cpu", threads=1, wait=False, compatible_with=1)
    times: dict[str, list[float]] = {"raw": [], "pinned": []}
    try:
        for _ in range(10):
            for key, enc in (("raw", raw), ("pinned", pinned)):
                for _ in range(calls // 10):
                    t = time.perf_counter()
                    enc.embed(frame)
                    times[key].append(time.perf_counter() - t)
        mapping = pinned._current.mapping  # noqa: SLF001 - the benchmark reads what serving applies
        z = raw.embed(frame)
        apply = []
        for _ in range(calls):
            t = time.perf_counter()
            mapping.apply(z)
            apply.append(time.perf_counter() - t)
    finally:
        raw.close()
        pinned.close()
    return {
        "raw_us": 1e6 * float(np.median(times["raw"])),
        "pinned_us": 1e6 * float(np.median(times["pinned"])),
        "apply_us": 1e6 * float(np.median(apply)),
    }


COLUMNS = ("chained", "pinned", *OFFLINE)


def report(result: dict) -> list[str]:
    acc1, rows = result["acc1"], result["rows"]
    lines = [
        f"## {result['name']}: {len(rows) + 1} versions, D={result['dim']}, "
        f"calibration {result['calibration']} frames, "
        f"head train/test {result['n_train']}/{result['n_test']}, training+export {result['train_s']:.0f} s",
        f"version 1 head accuracy: {acc1:.3f}",
        "| version | step | calibration fit frames | R² to prev | R² to v1 | CKA prev | CKA v1 | (a) raw | "
        + " | ".join(f"(b) {k}" for k in COLUMNS)
        + " | (c) refit |",
        "|---" * (9 + len(COLUMNS)) + "|",
    ]
    for r in rows:
        lines.append(
            f"| {r['version']} | {r['step']} | {r['fit_frames']} | {r['r2']:.3f} | {r['r2_v1']:.3f} | "
            f"{r['cka_prev']:.3f} | "
            f"{r['cka_v1']:.3f} | {r['raw']:.3f} | "
            + " | ".join(f"{r[k]:.3f}" for k in COLUMNS)
            + f" | {r['refit']:.3f} |"
        )
    for method in COLUMNS:
        worst = min(r[method] for r in rows)
        above = sum(r[method] > r["raw"] for r in rows)
        ok = worst >= 0.95 * acc1 and above == len(rows)
        lines.append(
            f"{method}: worst mapped accuracy {worst:.3f} = {worst / acc1:.3f} x version 1; above raw at "
            f"{above}/{len(rows)} versions; goal {'met' if ok else 'NOT met'}"
        )
    lines.append(
        f"lowest R² to v1 (pinned runtime's map): {min(r['r2_v1'] for r in rows):.3f}; last raw {rows[-1]['raw']:.3f}, "
        f"pinned {rows[-1]['pinned']:.3f}, refit {rows[-1]['refit']:.3f}"
    )
    c = result["cost"]
    lines.append(
        f"per-call cost, batch 1, median: unpinned {c['raw_us']:.0f} us, pinned {c['pinned_us']:.0f} us; "
        f"the map alone {c['apply_us']:.1f} us"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--versions", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="training steps between versions")
    parser.add_argument("--streams", default=None, help="comma-separated: digits,objects")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=None, help="'dev' or a folder with train/<class>/ and test/<class>/ photos")
    parser.add_argument("--config", default=None, help="with --data: the config (default configs/default.yaml)")
    parser.add_argument(
        "--distill", type=float, nargs="+", default=[0.0], help="with --data: train.compat_distill values"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("overrides", nargs="*", help="with --data: config overrides a.b=value")
    args = parser.parse_args(argv)
    if args.data is not None:
        return main_photos(args)
    versions = args.versions or (10 if args.quick else 12)
    steps = args.steps or (20 if args.quick else 60)
    streams = (args.streams or ("digits" if args.quick else "digits,objects")).split(",")
    torch.set_num_threads(2)
    print(
        f"# bench_compat: {datetime.now(timezone.utc).isoformat(timespec='seconds')}, "
        f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads; {versions} versions, {steps} steps apart, seed {args.seed}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-compat-") as tmp:
        for name in streams:
            print("\n".join(report(run_stream(name, versions, steps, args.seed, Path(tmp)))), flush=True)
    return 0


def main_photos(args: argparse.Namespace) -> int:
    from bench_quality import prepare_data

    torch.set_num_threads(args.threads)
    versions = args.versions or 10
    print(
        f"# bench_compat --data {args.data}: {datetime.now(timezone.utc).isoformat(timespec='seconds')}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.threads} torch thread(s); "
        f"{versions} versions, seed {args.seed}, config {args.config or 'configs/default.yaml'} "
        f"{' '.join(args.overrides)}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-compat-") as tmp:
        folder = prepare_data(args.data, Path(tmp) / "data", SIZE, args.seed)
        for weight in args.distill:
            result = run_photos(
                folder, args.config, list(args.overrides), versions, args.seed, weight, args.threads, Path(tmp)
            )
            print("\n".join(report_photos(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
