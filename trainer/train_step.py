"""One BYOL update as the continual loop runs it: device, precision, input conversion and the NaN guard.

Handed the `train` section only. A non-finite loss skips the update and puts back the BatchNorm
running statistics its forward pass moved (one NaN folded into a running mean would stay there);
after `train.nan_tolerance` such losses in a row the caller restores the last good state, which
`mark_good` records at each checkpoint.

In a multi-rank run (`ranks`, trainer/distributed.py) the forward runs through DDP and the loss is
averaged over the ranks before anything is updated: a non-finite loss on any rank is non-finite on
all of them (NaN propagates through the sum), so every rank skips that step together and their
NaN streaks, restores and weights stay the same. The EMA target is updated on the module itself.
"""

from __future__ import annotations

import copy
import logging
import math
import random
from contextlib import nullcontext
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from agent.core.config import TrainConfig
from agent.core.errors import ConfigError
from trainer.byol import BYOL
from trainer.distributed import SOLO, Ranks
from trainer.lr_schedule import lr_at, set_lr
from trainer.normalise import normalise, to_unit_nchw
from trainer.snapshot_distill import EmbeddingDistiller

log = logging.getLogger(__name__)


def resolve_device(train_cfg: TrainConfig) -> torch.device:
    """CUDA when there is one (or when asked for, which fails clearly without one), else the CPU."""
    if train_cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")
    if train_cfg.device == "cuda" or (train_cfg.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def setup_torch(train_cfg: TrainConfig, ranks: Ranks) -> tuple[torch.device, int]:
    """(device, seed) of this rank, with torch's threads (`train.threads`), cuDNN autotuning on CUDA and
    the Python, NumPy and torch RNGs seeded: each rank its own RNGs, batches and views (seed + rank);
    the weights start from `train.seed` (`build_learner`)."""
    if train_cfg.threads is not None:
        torch.set_num_threads(train_cfg.threads)
    device = resolve_device(train_cfg) if ranks.solo else ranks.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed batch and image size: autotuned kernels pay off
    if device.type == "cpu" and use_bf16(train_cfg, device) and native_cpu_bf16() is False:
        log.warning(
            "train.precision=bf16 on a CPU without AVX512-BF16 or AMX: bf16 is emulated there and slower than fp32 "
            "(set train.precision=fp32)"
        )
    seed = train_cfg.seed + ranks.rank
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    return device, seed


def native_cpu_bf16() -> Optional[bool]:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), from torch's own CPU checks; None when this
    torch cannot tell. Measured on a 2-core AMD EPYC with AVX512-BF16 (benchmarks/RESULTS.md, "ResNet-18 learning
    curve"): a ResNet-18 step of 64 at 32 px took 0.88 CPU s in bf16 autocast against 1.78 in fp32."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if not all(callable(check) for check in checks):
        return None
    return any(bool(check()) for check in checks)  # type: ignore[misc]


def use_bf16(train_cfg: TrainConfig, device: torch.device) -> bool:
    """bf16 autocast on CUDA by default (no loss scaling needed); fp32 on the CPU unless asked."""
    return train_cfg.precision == "bf16" or (train_cfg.precision == "auto" and device.type == "cuda")


def cpu_copy(obj: Any) -> Any:
    """A detached CPU deep copy of a (nested) state dict: a snapshot later steps cannot mutate."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return copy.deepcopy(obj)


class TrainStep:
    """Runs updates of `learner` with `optimizer` on `device`; tracks the non-finite streak and the last good state.

    `ranks`: the run's ranks; in a multi-rank run the learner is wrapped in DDP here (a collective:
    every rank constructs its TrainStep at the same point) and each update is one.
    """

    def __init__(
        self,
        learner: BYOL,
        optimizer: torch.optim.Optimizer,
        train_cfg: TrainConfig,
        device: torch.device,
        ranks: Ranks = SOLO,
    ):
        self.learner, self.optimizer, self.device = learner, optimizer, device
        self._cfg = train_cfg
        self._ranks = ranks
        self._forward = ranks.wrap(learner)  # DDP over the ranks, or the learner itself
        self.autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16(train_cfg, device) else nullcontext()
        )
        self._buffers = list(learner.buffers())
        self._buffers_before = [b.clone() for b in self._buffers]
        self.nan_streak = 0
        self.last_loss: Optional[float] = None
        self._good: Optional[dict[str, Any]] = None  # set by mark_good (the caller does, once resumed)
        self.distiller: Optional[EmbeddingDistiller] = None  # train.compat_distill: towards a frozen earlier version
        self._captured: Optional[list[tuple[torch.Tensor, torch.Tensor]]] = None  # (view, online embedding) per view
        if train_cfg.compat_distill > 0:
            if not ranks.solo:
                raise ConfigError("train.compat_distill works in single-process runs only; set it to 0 with ranks")
            self.distiller = EmbeddingDistiller(train_cfg.compat_distill, train_cfg.lr)
            online = learner.online.backbone

            # A plain function, not a bound method: deepcopy keeps functions as they are, so the copies of the
            # encoder made for export, the probe and the snapshot carry a hook that does nothing (not a copy of
            # this TrainStep). Collects only the online encoder, inside a training forward.
            def capture(module: torch.nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
                if self._captured is not None and module is online:
                    self._captured.append((inputs[0], output))

            online.register_forward_hook(capture)

    def set_snapshot_once(self, encoder: Callable[[], torch.nn.Module]) -> None:
        """With `train.compat_distill` > 0 and no snapshot yet, freeze `encoder()` (the version being published)
        as the space later updates are distilled towards; otherwise nothing."""
        if self.distiller is not None and not self.distiller.active:
            self.distiller.set_snapshot(encoder(), self.step, self.device)

    @property
    def step(self) -> int:
        return int(self.learner.step)

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC (pinned host or device) → float NCHW in [0, 1] on the device.

        NHWC permuted to NCHW *is* channels_last memory, so keeping that layout costs nothing.
        """
        x = to_unit_nchw(images, self.device, non_blocking=True)
        return x if self._cfg.channels_last else x.contiguous()

    @torch.no_grad()
    def embed(self, images: torch.Tensor, size: Union[int, tuple[int, int]], which: str = "target") -> torch.Tensor:
        """uint8 NHWC frames of any size → (N, D) float32 CPU embeddings of the `which` encoder.

        Resized to `size` (the model's input side, or (height, width); bilinear, antialiased) and normalised with the
        learner's mean/std, under the same precision as training. Used by min-redundancy eviction.
        """
        x = torch.nn.functional.interpolate(
            self.to_input(images), size=size, mode="bilinear", antialias=True, align_corners=False
        )
        with self.autocast:
            vectors = self.learner.embed(normalise(x, self.learner.mean, self.learner.std), which=which)
        return vectors.float().cpu()

    def __call__(self, images: torch.Tensor, partners: Optional[torch.Tensor] = None) -> Optional[float]:
        """One update on uint8 NHWC `images` (and their temporal `partners`); the loss (averaged over the
        ranks), or None when it was not finite on some rank (nothing updated, BatchNorm statistics put
        back, `nan_streak` counted). CollectiveError when a peer rank is gone."""
        if self._ranks.solo:
            return self._update(images, partners)
        with self._ranks.guard("a training step"):
            return self._update(images, partners)

    def _update(self, images: torch.Tensor, partners: Optional[torch.Tensor]) -> Optional[float]:
        x = self.to_input(images)
        x2 = self.to_input(partners) if partners is not None else None
        torch._foreach_copy_(self._buffers_before, self._buffers)
        distiller = self.distiller if self.distiller is not None and self.distiller.active else None
        self._captured = [] if distiller is not None else None
        try:
            with self.autocast:  # x is uint8 / 255: in [0, 1] by construction, no range check (a device sync)
                loss = self._forward(x, images2=x2, unit_range=True)
                if distiller is not None and self._captured:
                    term = distiller.loss([v for v, _ in self._captured], [e for _, e in self._captured])
                    loss = loss if term is None else loss + term
        finally:
            self._captured = None
        value = self._ranks.mean(loss.detach())
        if not math.isfinite(value):
            torch._foreach_copy_(self._buffers, self._buffers_before)
            self.optimizer.zero_grad(set_to_none=True)
            self.nan_streak += 1
            return None
        self.nan_streak = 0
        set_lr(self.optimizer, lr_at(self.step, self._cfg.lr, self._cfg.lr_warmup_steps))
        self.optimizer.zero_grad(set_to_none=True)
        if self.distiller is not None:
            self.distiller.zero_grad()
        loss.backward()
        self.optimizer.step()
        if self.distiller is not None:
            self.distiller.step()
        self.learner.update_moving_average()
        self.last_loss = value
        return value

    def snapshot(self) -> dict[str, Any]:
        return {"learner": cpu_copy(self.learner.state_dict()), "optimizer": cpu_copy(self.optimizer.state_dict())}

    def mark_good(self) -> None:
        """Remember now as the state to fall back to (called when a checkpoint was written or loaded)."""
        self._good = self.snapshot()

    def restore_good(self) -> None:
        """Fall back to the last good state (the one `mark_good` recorded) and clear the streak."""
        if self._good is None:
            raise RuntimeError("TrainStep.restore_good before mark_good")
        self.restore(self._good)
        self.nan_streak = 0

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Load learner and optimizer state, keeping the configured hyperparameters (lr, weight decay):
        lowering `train.lr` and restarting is how a diverged run is fixed."""
        configured = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        self.learner.load_state_dict(snapshot["learner"])
        self.optimizer.load_state_dict(copy.deepcopy(snapshot["optimizer"]))
        for group, hyper in zip(self.optimizer.param_groups, configured):
            group.update(hyper)
