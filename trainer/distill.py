"""Distillation towards a frozen earlier encoder: CaSSLe's term against forgetting, and the machinery that
training-time compatibility with a pinned version can share (issue 26, items 2 and 4).

CaSSLe (Fini et al., "Self-Supervised Models are Continual Learners", CVPR 2022, eq. 3-4): a predictor g
maps the current online projection z = f(x) to the projection z_old = f_old(x) of a frozen snapshot of the
network taken earlier, and g(z) regressing z_old is added to the SSL loss. Regressing through g, rather
than tying z to z_old, lets the current features move on as long as the old ones stay recoverable from
them. For BYOL the distance is BYOL's own (2 - 2 cos, trainer/loss.py), as in CaSSLe's BYOL variant.

`SnapshotDistiller(snapshot, dim, hidden)` holds the frozen copy of any module mapping views to (N, dim)
vectors (an online branch's backbone + projector, or an exported encoder version's weights loaded with
`point_at`) and the trainable predictor. Not wired into `TrainStep` yet (no config key): the learner's
forward would have to hand out its online projections (trainer/byol.py, being split as of 2026-12-05).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from trainer.heads import MLP, byol_head
from trainer.loss import regression_loss


class SnapshotDistiller(nn.Module):
    """A frozen snapshot of a network and a predictor from the current projections to the snapshot's.

    `snapshot`: any module, deep-copied, put in eval mode and frozen (its BatchNorm statistics stay as
    taken). `dim`: width of the projections. `hidden`: the predictor's hidden width (BYOL's head, as
    CaSSLe's predictor); 0 makes the predictor the identity (the term then ties the projections).
    """

    def __init__(self, snapshot: nn.Module, dim: int, hidden: int) -> None:
        super().__init__()
        self.snapshot = copy.deepcopy(snapshot)
        self._freeze()
        self.predictor: nn.Module = nn.Identity() if hidden == 0 else MLP(dim, byol_head(hidden, dim))

    def _freeze(self) -> None:
        self.snapshot.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "SnapshotDistiller":
        """The predictor trains; the snapshot stays in eval mode."""
        super().train(mode)
        self.snapshot.eval()
        return self

    @torch.no_grad()
    def point_at(self, state: Mapping[str, Any] | nn.Module) -> None:
        """Make the snapshot equal an earlier state: a module of the same architecture or its state_dict.
        Raises RuntimeError (torch's) for mismatched keys or shapes."""
        source = state.state_dict() if isinstance(state, nn.Module) else state
        self.snapshot.load_state_dict(source)
        self._freeze()

    def loss(self, projections: Tensor, views: Tensor, groups: int = 1) -> Tensor:
        """Mean 2 - 2 cos(g(z), z_old) over the batch (a scalar, fp32).

        `projections`: (N, dim) online projections of `views`, with gradient; `views`: the normalised
        inputs (N, C, H, W) that produced them; `groups`: how many views are stacked on dim 0 (for the
        predictor's per-view BatchNorm). The snapshot sees the same views without gradient."""
        with torch.no_grad():
            old = self.snapshot(views)
            old = old[0] if isinstance(old, tuple) else old
        predicted = (
            self.predictor(projections)
            if isinstance(self.predictor, nn.Identity)
            else self.predictor(projections, groups)
        )
        return regression_loss(predicted, old.detach()).mean()
