"""Quick screening of learner settings on real photos: the learner in-process, no capture, wire or export.

For comparing settings fast (several at once, one thread each), not for claims about the product:
`bench_quality.py` measures the product end to end. The learner is `build_learner` /
`build_optimizer` from the config (plus the trainer's learning-rate warm-up), fed batches drawn
from the training photos fitted to the capture size as capture fits them, for a budget of process
CPU seconds (the training steps only); every `--every` CPU seconds the target encoder is scored by
weighted cosine kNN (k = 20), DATA/train as the bank and DATA/test as queries, next to its random
init.

    python benchmarks/screen_quality.py --threads 1 --tag paper-views model.stem=small model.image_size=32 &
    python benchmarks/screen_quality.py --threads 1 --tag lr1e-3 train.lr=1e-3 train.lr_warmup_steps=100 &
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_quality import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    InProcess,
    initial_network,
    prepare_data,
    stream_frames,
)

from agent.core.config import load_config  # noqa: E402
from trainer.backbone import Backbone  # noqa: E402
from trainer.feature_probes import knn_top1, load_train_test_folder, torch_features  # noqa: E402
from trainer.learner_factory import build_learner, build_optimizer  # noqa: E402
from trainer.lr_schedule import lr_at, set_lr  # noqa: E402
from trainer.train_step import use_bf16  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="dev", help="'dev', 'procedural' or a folder with train/ and test/")
    parser.add_argument("--budget", type=float, default=600.0, help="CPU seconds of training steps")
    parser.add_argument("--every", type=float, default=300.0, help="score every this many CPU seconds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default="run", help="prefix of every printed line")
    parser.add_argument("--config", default=None)
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, list(args.overrides))
    size, tc = cfg.model.image_size, cfg.train
    data_dir = prepare_data(args.data, Path(tempfile.mkdtemp(prefix="screen-quality-")), size, seed=0)
    data = load_train_test_folder(data_dir, size, 100_000)
    bank, queries = data.split
    frames = stream_frames(data_dir / "train", cfg)

    def knn(module: torch.nn.Module) -> float:
        feats = torch_features(module, data.images, IMAGENET_MEAN, IMAGENET_STD)
        return knn_top1(feats[bank], data.labels[bank], feats[queries], data.labels[queries], k=cfg.eval.k)

    print(f"{args.tag} random init kNN {knn(Backbone(initial_network(cfg), cfg.model.hidden_layer)):.3f}", flush=True)
    learner = build_learner(cfg.model, tc, "cpu", cfg.augment)
    optimizer = build_optimizer(learner, tc)

    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16(tc, torch.device("cpu")))

    def step(batch: torch.Tensor) -> float:
        with autocast:  # train.precision, as the trainer's TrainStep applies it
            loss = learner(batch)
        set_lr(optimizer, lr_at(learner.step, tc.lr, tc.lr_warmup_steps))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        learner.update_moving_average()
        return loss.item()

    run = InProcess(step, learner.online.backbone, frames, tc.batch_size, tc.seed)
    mark = args.every
    while run.cpu < args.budget:
        run.train_until(min(mark, args.budget))
        mark += args.every
        print(
            f"{args.tag} cpu {run.cpu:.0f} steps {run.steps} loss {run.last_loss:.3f} tau {learner.tau:.4f} "
            f"kNN target {knn(learner.encoder_module('target')):.3f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
