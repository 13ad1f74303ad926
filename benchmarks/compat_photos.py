"""bench_compat.py's `--data` job: hot swaps on real photos, as the main job runs them (`run_photos`): the real
`ContinualTrainer` on a looping photo stream, its in-process exporter, raw and pinned `HotEncoder`s embedding every
version served (`VersionRecorder`), and the report (`report_photos`). See bench_compat.py's docstring.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Optional, Union

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent.core.config import load_config  # noqa: E402
from agent.core.wire import EndOfStream, Frame  # noqa: E402
from agent.robot.runtime import HotEncoder  # noqa: E402
from export.embedding_maps import linear_cka  # noqa: E402
from export.manifest import manifest_filename, read_manifest  # noqa: E402
from trainer.feature_probes import knn_top1, load_train_test_folder  # noqa: E402


class LoopInbox:
    """A `FrameInbox` (trainer/ingest.py) over photos held in memory, looped in a seeded order per pass until
    `frames` were handed out, then end-of-stream: what the receiver hands ingest from a looping folder source."""

    endpoint = "inproc://bench-compat"

    def __init__(self, images: np.ndarray, frames: int, seed: int) -> None:
        self._images, self._frames, self._next = images, frames, 0
        self._rng = np.random.default_rng(seed)
        self._order = self._rng.permutation(len(images))
        self.stats = SimpleNamespace(malformed=0, refused=0)
        self._ended = False

    def recv(self, timeout_s: Optional[float]) -> Optional[Union[Frame, EndOfStream]]:
        if self._next < self._frames:
            i = self._next % len(self._images)
            if i == 0 and self._next:
                self._order = self._rng.permutation(len(self._images))
            self._next += 1
            return Frame(camera_id=0, seq=self._next, timestamp=self._next / 15.0, image=self._images[self._order[i]])
        if not self._ended:
            self._ended = True
            return EndOfStream(camera_id=0, seq=self._next + 1, timestamp=time.time())
        time.sleep(min(timeout_s or 0.0, 0.05))
        return None

    def close(self) -> None:
        pass


class VersionRecorder:
    """Embeds `images` through a HotEncoder each time it serves a new version (polled): {version: (N, D)}.
    A batch computed by two versions (a swap mid-way) is embedded again."""

    def __init__(self, encoder: HotEncoder, images: np.ndarray, batch: int = 500) -> None:
        self.encoder, self.images, self.batch = encoder, images, batch
        self.embeddings: dict[int, np.ndarray] = {}

    def poll(self) -> None:
        version = self.encoder.version
        if version in self.embeddings:
            return
        parts, versions = [], set()
        for i in range(0, len(self.images), self.batch):
            z, v = self.encoder.embed_with_version(self.images[i : i + self.batch])
            parts.append(z)
            versions.add(v)
        if len(versions) == 1:
            self.embeddings[versions.pop()] = np.concatenate(parts)


def r2_to_pin(export_dir: Path, version: int, pin: int = 1) -> Optional[float]:
    """Held-out R² of the version's map into `pin`'s space, from its manifest (None: no such map)."""
    compat = read_manifest(export_dir / manifest_filename(version)).raw.get("compat") or {}
    if compat.get("maps_to") == pin:
        return compat.get("r2")
    return next((d.get("r2") for d in compat.get("direct", []) if d.get("maps_to") == pin), None)


def paced_exporter(recorders: list[VersionRecorder], timeout_s: float = 1800.0):
    """A BackgroundExporter whose `submit` first waits (at most `timeout_s`) until the previous export is done
    and the HotEncoders' recorders have embedded what it published: every version is served and measured
    however slow the machine (the trainer waits there, as it would for a slow disk; steps are unchanged)."""
    from export.exporter import BackgroundExporter  # onnx loads only here

    class PacedExporter(BackgroundExporter):
        def __init__(self, *args: object, **kwargs: object) -> None:
            self.submitted = self.finished = 0
            self.published: list[int] = []
            self.refused: list[str] = []
            self.r2_v1: dict[int, Optional[float]] = {}
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

        def _caught_up(self) -> bool:
            if self.finished < self.submitted:
                return False
            last = self.published[-1:]
            return all(v in r.embeddings for v in last for r in recorders) and (not last or bool(recorders))

        def submit(self, step: int, encoder: torch.nn.Module, frames: np.ndarray) -> None:
            deadline = time.monotonic() + timeout_s
            while not self._caught_up() and time.monotonic() < deadline:
                time.sleep(0.05)
            self.submitted += 1
            super().submit(step, encoder, frames)

        def _run(self, job):  # type: ignore[no-untyped-def]
            event = super()._run(job)
            if event.get("event") == "export":
                self.r2_v1[event["version"]] = r2_to_pin(self._publisher.export_dir, event["version"])
                self.published.append(event["version"])
            else:
                self.refused.append(f"step {event.get('step')}: {event.get('reason')}")
            self.finished += 1
            return event

    return PacedExporter


def run_photos(
    folder: Path,
    config: Optional[str],
    overrides: list[str],
    versions: int,
    seed: int,
    distill: float,
    threads: int,
    work: Path,
) -> dict:
    """The photos through the real trainer and exporter; per served version: head accuracy raw and pinned, kNN."""
    from trainer.continual import ContinualTrainer

    base = load_config(config, list(overrides))
    data = load_train_test_folder(folder, (base.capture.height, base.capture.width), 10**6)
    bank, queries = data.split
    every = base.export.every_steps or 200
    max_steps = every * versions + every // 2  # `versions` exports at every_steps, and the final one at the end
    cfg = load_config(
        config,
        [
            "train.device=cpu",
            f"train.threads={threads}",
            f"train.seed={seed}",
            f"train.max_steps={max_steps}",
            "train.probe_data=null",
            "train.checkpoint_every=1000000",
            "export.every_seconds=null",
            "train.metrics_every=1000",
            "export.keep=3",
            f"train.compat_distill={distill!r}",
            # the drift gate would stop serving versions: each is measured, its R² shown
            "export.min_compatibility=null",
            *overrides,
        ],
    )
    frames = len(bank) * (1 + int(max_steps / (cfg.train.replay_ratio * len(bank))))
    run_dir = work / f"photos-distill{distill:g}-seed{seed}"
    exports = run_dir / "exports"
    recorders: list[VersionRecorder] = []
    exporter_cls = paced_exporter(recorders)
    made: list = []

    def make_exporter(mean: tuple[float, ...], std: tuple[float, ...]):  # type: ignore[no-untyped-def]
        made.append(
            exporter_cls(cfg.export, cfg.model, exports, mean=mean, std=std, capture=cfg.capture, eval_cfg=cfg.eval)
        )
        return made[-1]

    inbox = LoopInbox(data.images[bank], frames, seed)
    with open(os.devnull, "w") as quiet:
        trainer = ContinualTrainer(
            cfg, run_dir, open_receiver=lambda: inbox, make_exporter=make_exporter, lossless=True, stream=quiet
        )
        failure: list[BaseException] = []

        def train() -> None:
            try:
                trainer.run(threading.Event())
            except BaseException as exc:  # reported below: the benchmark must not hang on a dead trainer
                failure.append(exc)

        t0 = time.perf_counter()
        thread = threading.Thread(target=train, name="bench-trainer", daemon=True)
        thread.start()
        exports.mkdir(parents=True, exist_ok=True)
        # both wait for version 1; the pinned one writes pins/encoder-000001.pin now, before it exists
        pinned = HotEncoder(exports, providers="cpu", threads=1, compatible_with=1, poll_interval_s=0.2, timeout_s=7200)
        raw = HotEncoder(exports, providers="cpu", threads=1, poll_interval_s=0.2, timeout_s=7200)
        try:
            rec_raw = VersionRecorder(raw, data.images)  # train/ and test/: the head on v1, kNN per version
            rec_pin = VersionRecorder(pinned, data.images[queries])
            recorders += [rec_raw, rec_pin]
            while True:
                alive = thread.is_alive()
                rec_raw.poll()
                rec_pin.poll()
                if not alive:
                    time.sleep(1.0)  # the final export: let the watchers see it
                    rec_raw.poll()
                    rec_pin.poll()
                    break
                thread.join(0.2)
        finally:
            pinned.close()
            raw.close()
        train_s = time.perf_counter() - t0
    if failure:
        raise failure[0]
    exporter = made[0]
    labels = data.labels
    first = rec_raw.embeddings[1]
    head = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(first[bank], labels[bank])
    y = labels[queries]
    acc1 = head.score(first[queries], y)
    rows = []
    for v in sorted(set(rec_raw.embeddings) & set(rec_pin.embeddings)):
        z = rec_raw.embeddings[v]
        rows.append(
            {
                "version": v,
                "raw": head.score(z[queries], y),
                "pinned": head.score(rec_pin.embeddings[v], y),
                "knn": knn_top1(z[bank], labels[bank], z[queries], labels[queries], k=cfg.eval.k),
                "cka_v1": linear_cka(z[queries], first[queries]),
                "r2_v1": exporter.r2_v1.get(v),
            }
        )
    return {
        "distill": distill,
        "acc1": acc1,
        "rows": rows,
        "train_s": train_s,
        "steps": trainer.step,
        "dim": first.shape[1],
        "n_train": len(bank),
        "n_test": len(queries),
        "seed": seed,
        "config": config or "configs/default.yaml",
        "overrides": overrides,
        "every": every,
        "batch": cfg.train.batch_size,
        "encoder": cfg.model.encoder,
        "size": cfg.model.image_size,
        "published": exporter.published,
        "refused": exporter.refused,
    }


def report_photos(result: dict) -> list[str]:
    acc1, rows = result["acc1"], result["rows"]
    lines = [
        f"## photos, train.compat_distill={result['distill']:g}, seed {result['seed']}: {result['encoder']} "
        f"{result['size']} px, batch {result['batch']}, a version every {result['every']} steps, "
        f"{result['steps']} steps, D={result['dim']}, head train/test {result['n_train']}/{result['n_test']}, "
        f"training+export {result['train_s']:.0f} s",
        f"version 1 head accuracy: {acc1:.3f}",
        f"published versions {result['published']}; refused exports: {len(result['refused'])}"
        + "".join(f"\n  refused {line}" for line in result["refused"]),
        "| version | head raw | raw / v1 | head pinned | pinned / v1 | kNN (raw) | CKA to v1 | map R² to v1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        r2 = "-" if r["r2_v1"] is None else f"{r['r2_v1']:.3f}"
        lines.append(
            f"| {r['version']} | {r['raw']:.3f} | {r['raw'] / acc1:.3f} | {r['pinned']:.3f} | "
            f"{r['pinned'] / acc1:.3f} | {r['knn']:.3f} | {r['cka_v1']:.3f} | {r2} |"
        )
    later = [r for r in rows if r["version"] > 1]
    if later:
        worst = min(later, key=lambda r: r["pinned"])
        ok = worst["pinned"] >= 0.95 * acc1 and len(rows) >= 10
        lines.append(
            f"pinned: worst {worst['pinned']:.3f} = {worst['pinned'] / acc1:.3f} x version 1 (version "
            f"{worst['version']}) over {len(rows)} versions; goal (>= 0.95x through >= 10 versions) "
            f"{'met' if ok else 'NOT met'}; newest version's kNN {rows[-1]['knn']:.3f}"
        )
    return lines
