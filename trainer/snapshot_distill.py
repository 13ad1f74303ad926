"""Distillation towards a frozen snapshot of the encoder: training-time compatibility with an earlier version.

A policy head fit on version P's embeddings is served later versions through a linear map into P's
space (`export.fit_maps`). A map fit after the fact only undoes the drift that is linear; this term
keeps the drift linear while training. It is CaSSLe's construction (Fini et al., CVPR 2022,
"Self-Supervised Models are Continual Learners": a trainable predictor maps the current features
into a frozen earlier model's space, and the current encoder is trained so that the mapped features
match the frozen ones), aimed at the version a runtime is pinned to, as BCT trains a new model
towards an old one's space (Shen et al., CVPR 2020, "Towards Backward-Compatible Representation
Learning"). The predictor is affine, the same family as the exporter's maps, so what it can learn
during training a published map can also find afterwards.

    loss = weight × Σ‖g(f(v)) − f₀(v)‖² / Σ‖f₀(v) − mean f₀(v)‖²

over the batch's augmented views v, with f the online encoder (hidden-layer embedding, (N, D)), f₀
the frozen snapshot (eval mode, no gradients, (N, D₀)) and g an affine map D → D₀ started at the
identity (D = D₀) or at zero. The ratio is 1 − R² of g's fit on the batch: the share of the
snapshot's embedding variance the mapped embedding does not explain, the figure the exporter's drift
gate reads on held-out frames. Its gradient reaches the encoder and g; g has its own Adam with the
training learning rate, so the run's optimizer and its checkpoints are unchanged.

The trainer (`TrainStep.set_snapshot_once`, called by `ContinualTrainer`) freezes the encoder it first
publishes: at its first export, or its first checkpoint when `run`'s exporter publishes from checkpoints.
Neither snapshot nor predictor is checkpointed: after a restart the snapshot is the first version that
session publishes, not version 1 (a pinned policy then wants a head refit and `repin`). Any frozen module
mapping views to (N, D₀) can be the snapshot (an earlier room's encoder, against forgetting, as well).
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import Tensor, nn


class EmbeddingDistiller:
    """The distillation term of one learner's online encoder towards a frozen snapshot of an encoder.

    `weight` > 0. Until `set_snapshot` is called, `loss` returns None (nothing to distil towards).
    """

    def __init__(self, weight: float, lr: float) -> None:
        if not weight > 0:
            raise ValueError(f"distillation weight must be > 0; got {weight!r}")
        self.weight = float(weight)
        self.lr = float(lr)
        self.snapshot: Optional[nn.Module] = None
        self.predictor: Optional[nn.Linear] = None
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.snapshot_step: Optional[int] = None

    @property
    def active(self) -> bool:
        return self.snapshot is not None

    def set_snapshot(self, encoder: nn.Module, step: int, device: torch.device) -> None:
        """Freeze a copy of `encoder` (normalised float NCHW → (N, D₀)) as the space to stay compatible with;
        the predictor is made at the first `loss` call, once the online embedding's width is known."""
        frozen = copy.deepcopy(encoder).to(device).eval().requires_grad_(False)
        self.snapshot, self.snapshot_step = frozen, int(step)
        self.predictor = self.optimizer = None

    def _make_predictor(self, d_in: int, d_out: int, device: torch.device) -> nn.Linear:
        predictor = nn.Linear(d_in, d_out).to(device)
        with torch.no_grad():
            predictor.bias.zero_()
            if d_in == d_out:
                predictor.weight.copy_(torch.eye(d_in, device=device))
            else:
                predictor.weight.zero_()
        self.predictor = predictor
        self.optimizer = torch.optim.Adam(predictor.parameters(), lr=self.lr)
        return predictor

    def loss(self, views: list[Tensor], embeddings: list[Tensor]) -> Optional[Tensor]:
        """The weighted term for the online encoder's `embeddings` (each (N, D), with gradients) of the
        augmented `views` (each (N, C, H, W), normalised, as the encoder saw them); None before a snapshot."""
        if self.snapshot is None or not embeddings:
            return None
        z = torch.cat([e.float() for e in embeddings])
        with torch.no_grad():
            target = torch.cat([self.snapshot(v).float() for v in views])
        predictor = self.predictor or self._make_predictor(z.shape[1], target.shape[1], z.device)
        residual = (predictor(z) - target).pow(2).sum()
        total = (target - target.mean(0)).pow(2).sum().clamp_min(1e-12)
        return self.weight * residual / total

    def zero_grad(self) -> None:
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        if self.optimizer is not None:
            self.optimizer.step()
