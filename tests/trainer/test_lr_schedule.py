"""Learning-rate warm-up: linear from lr / warmup to lr, then constant; what the trainer logs."""

from __future__ import annotations

import pytest
import torch

from trainer.lr_schedule import lr_at, set_lr


def test_warmup_is_linear_then_constant() -> None:
    assert [lr_at(s, 1.0, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_at(0, 3e-4, 0) == 3e-4
    opt = torch.optim.SGD(
        [{"params": [torch.zeros(1, requires_grad=True)]}, {"params": [torch.zeros(1, requires_grad=True)]}], lr=1.0
    )
    set_lr(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5, 0.5])
