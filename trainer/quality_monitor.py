"""Online quality monitor: kNN / linear probe of the encoder while it trains, off the training thread.

The BYOL loss says little about downstream quality (it can fall while the features get worse:
benchmarks/RESULTS.md, real photos), and a random-init conv net is a strong kNN baseline. With
`train.probe_data` (on by default: "digits", scikit-learn's bundled labelled set, so it needs no
download; or a labelled image folder, one subfolder per class or `train/` + `test/` halves), the
trainer hands a CPU copy of its encoder to this monitor at each checkpoint or export (or every
`train.probe_every` steps), and once more for the final state; a background thread scores it
exactly as `byol-agent eval` does and also scores, once, the random-init twin: the same
architecture, stem and input size with the run's own initial weights (seeded by `train.seed`).
Each result is an `EvalResult` that the trainer writes to metrics.jsonl as an `{"event": "eval"}`
line (so `report` plots it per exported version next to the random-init line) and shows on the
status line. Features are computed on the trainer's device (a GPU makes a ResNet's probe cheap).

The thread never computes at the same time as a training step: each forward batch holds the trainer's
`compute_lock` (a step holds it too) and the kNN / linear probe run on one BLAS / OpenMP thread
(`threadpool_limits`). Two thread pools spinning side by side on a small, loaded CPU once stalled a
2-core run for 28 minutes (a probe in `knn_top1`, training in `backward`, neither progressing).

One scoring at a time: a request that arrives while the previous one still runs is skipped, so a
slow probe never queues work behind the trainer (the final one waits instead). The thread is an
`agent.core.worker.Worker` (the one background-thread lifecycle); a scoring that fails is stored and
re-raised once by the next `poll()` (the style of huey's consumer), never lost, and the monitor goes
on scoring the next request.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from agent.core.config import EvalConfig, ModelConfig
from agent.core.worker import Worker
from trainer.feature_probes import (
    EvalResult,
    evaluate_features,
    load_eval_data,
    random_init_encoder,
    stratified_split,
    torch_features,
)

log = logging.getLogger(__name__)


@dataclass
class _Request:
    step: int
    version: Optional[int]
    encoder: nn.Module


class QualityMonitor(Worker):
    """Scores encoders on `data` in a background thread (started now); see the module docstring.

    `data`: "digits" or a labelled image folder, loaded now at `model_cfg.image_size` (SourceError
    with a one-line message if it is missing or holds too few images). `mean` / `std`: the learner's
    input normalisation (per channel, for float RGB in [0, 1]). `device`: where features are computed; `weights`: which
    of the learner's encoders is handed in ("target" or "online", as `export.weights`), for the record.
    """

    def __init__(
        self,
        data: str,
        model_cfg: ModelConfig,
        eval_cfg: EvalConfig,
        seed: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        device: torch.device = torch.device("cpu"),
        weights: str = "target",
        compute_lock: Optional[threading.Lock] = None,
    ) -> None:
        super().__init__("quality-monitor")
        self._data = load_eval_data(data, model_cfg.image_size, eval_cfg.max_images, seed)
        labels = self._data.labels
        self._split = self._data.split or stratified_split(labels, eval_cfg.test_fraction, seed)
        self._model_cfg, self._eval_cfg, self._seed = model_cfg, eval_cfg, seed
        self._mean, self._std, self._device, self._weights = mean, std, device, weights
        self._reference: Optional[tuple[float, float]] = None
        self._cond = threading.Condition()
        self._pending: Optional[_Request] = None
        self._scoring = False
        self._closing = False
        self._results: list[EvalResult] = []
        self._failure: Optional[Exception] = None  # the last scoring that failed, until poll() raises it
        self._compute_lock = compute_lock if compute_lock is not None else threading.Lock()
        self.start()

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._pending is not None or self._scoring

    def submit(
        self, step: int, version: Optional[int], encoder: nn.Module, wait: bool = False, wait_s: float = 120.0
    ) -> bool:
        """Start scoring `encoder` (an eval-mode CPU module: normalised float NCHW -> (N, D)); False if busy.

        `version`: the version published when submitted (None if none). `wait`: give a scoring in
        progress up to `wait_s` to finish instead of skipping this one (the final state of a run)."""
        with self._cond:
            deadline = time.monotonic() + wait_s
            while wait and (self._pending is not None or self._scoring) and self.alive:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._pending is not None or self._scoring or self._closing or not self.alive:
                return False
            self._pending = _Request(step, version, encoder)
            self._cond.notify_all()
        return True

    def poll(self) -> list[EvalResult]:
        """Results finished since the last poll; re-raises (once) the error of a failed scoring, and the
        error that ended the thread (`Worker.check`)."""
        self.check()
        with self._cond:
            if self._failure is not None:
                error, self._failure = self._failure, None
                raise error
            results, self._results = self._results, []
        return results

    def close(self, timeout_s: float = 60.0) -> list[EvalResult]:
        """Wait up to `timeout_s` for a scoring in progress (or pending), stop the thread; return what finished."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self.join(timeout_s)
        return self.poll()

    # -- the worker's thread --------------------------------------------------------------------------

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def loop_once(self) -> bool:
        with self._cond:
            while self._pending is None and not self._closing and not self.stopping:
                self._cond.wait(1.0)
            request, self._pending = self._pending, None
            if request is None:
                return False  # closed (or stopped) with nothing pending
            self._scoring = True
        outcome: Union[EvalResult, Exception]
        try:
            outcome = self._score(request.step, request.version, request.encoder)
        except Exception as exc:  # stored, re-raised on the training thread by poll()
            outcome = exc
        with self._cond:
            self._scoring = False
            if isinstance(outcome, Exception):
                self._failure = outcome
            else:
                self._results.append(outcome)
            self._cond.notify_all()
        return True

    def on_error(self, exc: BaseException) -> None:  # a bug in the loop itself (not in a scoring): stored for check()
        log.error("quality-monitor thread failed: %r", exc, exc_info=exc)

    def _features(self, module: nn.Module) -> np.ndarray:
        return torch_features(
            module.to(self._device), self._data.images, self._mean, self._std, guard=self._compute_lock
        )

    def _score(self, step: int, version: Optional[int], encoder: nn.Module) -> EvalResult:
        """Features of `encoder` (and, the first time, of the random-init twin), kNN / linear probe."""
        started = time.perf_counter()
        train, test = self._split
        k, labels = self._eval_cfg.k, self._data.labels
        if self._reference is None:
            section = self._model_cfg.model_dump(mode="json")
            reference = random_init_encoder(
                section,
                self._seed,
                self._model_cfg,  # our own config: trusted
                channels=len(self._mean),
            )  # a mono run's twin takes gray frames
            ref_feats = self._features(reference)
            with threadpool_limits(limits=1):
                self._reference = evaluate_features(ref_feats, labels, train, test, k, self._seed)
        feats = self._features(encoder.eval())
        with threadpool_limits(limits=1):
            knn, linear = evaluate_features(feats, labels, train, test, k, self._seed)
        return EvalResult(
            encoder=f"{self._weights} at step {step}",
            version=version,
            step=step,
            data=self._data.name,
            k=min(k, len(train)),
            n_train=len(train),
            n_test=len(test),
            num_classes=len(self._data.classes),
            feature_dim=int(feats.shape[1]),
            knn_top1=knn,
            linear_top1=linear,
            random_knn_top1=self._reference[0],
            random_linear_top1=self._reference[1],
            seed=self._seed,
            seconds=time.perf_counter() - started,
            notes=[f"online monitor (torch, {self._weights} encoder)"],
        )
