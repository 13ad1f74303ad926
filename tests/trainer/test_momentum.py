"""EMA against a hand computation, the tau schedules, and the loss at the reference scale."""

from __future__ import annotations

import math

import pytest
import torch

from agent.core.errors import ConfigError
from trainer.loss import byol_loss
from trainer.momentum import ema_update, tau_at


def test_ema_update_matches_hand_computation() -> None:
    torch.manual_seed(0)
    target = [torch.randn(3, 4), torch.randn(5)]
    online = [torch.randn(3, 4), torch.randn(5)]
    expected = [
        [0.9 * t + 0.1 * o for t, o in zip(tv.flatten().tolist(), ov.flatten().tolist())]
        for tv, ov in zip(target, online)
    ]
    tensors = list(target)
    ema_update(target, online, tau=0.9)
    assert all(a is b for a, b in zip(tensors, target)), "in place"
    for tensor, values in zip(target, expected):
        assert tensor.flatten().tolist() == pytest.approx(values, abs=1e-6)


def test_constant_schedule() -> None:
    assert [tau_at(k, "constant", 0.99, 1.0, 0, None) for k in (0, 10, 10**7)] == [0.99] * 3


def test_cosine_schedule_reaches_final_at_total_steps() -> None:
    taus = [tau_at(k, "cosine", 0.996, 1.0, 0, 100) for k in (0, 25, 50, 100, 500)]
    reference = [1 - (1 - 0.996) * (math.cos(math.pi * min(k, 100) / 100) + 1) / 2 for k in (0, 25, 50, 100, 500)]
    assert taus == pytest.approx(reference)
    assert taus[0] == pytest.approx(0.996) and taus[2] == pytest.approx(0.998) and taus[-1] == 1.0


def test_warmup_constant_schedule_holds_after_warmup() -> None:
    taus = [tau_at(k, "warmup_constant", 0.99, 0.996, 10, None) for k in (0, 5, 10, 11, 10**7)]
    assert taus == pytest.approx([0.99, 0.993, 0.996, 0.996, 0.996])
    assert tau_at(0, "warmup_constant", 0.99, 0.996, 0, None) == pytest.approx(0.996)


@pytest.mark.parametrize(
    "args, message",
    [
        (("linear", 0.99, 1.0, 0, None), "unknown tau_schedule 'linear'; allowed: constant, cosine, warmup_constant"),
        (("cosine", 0.99, 1.0, 0, None), "needs total_steps"),
        (("constant", 1.2, 1.0, 0, None), r"tau base\) must be in \[0, 1\]"),
        (("warmup_constant", 0.99, -0.1, 5, None), r"tau_final must be in \[0, 1\]"),
        (("warmup_constant", 0.99, 0.996, -1, None), "tau_warmup_steps"),
    ],
)
def test_bad_schedules_name_the_problem(args: tuple, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tau_at(0, *args)


def test_loss_is_the_sum_of_both_terms_averaged_over_the_batch() -> None:
    torch.manual_seed(0)
    p1, p2, z1, z2 = (torch.randn(4, 6) for _ in range(4))
    rows = []
    for i in range(4):
        a = torch.dot(p1[i], z2[i]) / (p1[i].norm() * z2[i].norm())
        b = torch.dot(p2[i], z1[i]) / (p2[i].norm() * z1[i].norm())
        rows.append((2 - 2 * a) + (2 - 2 * b))
    torch.testing.assert_close(byol_loss(p1, p2, z1, z2), torch.stack(rows).mean())
    assert byol_loss(p1, p2, p2, p1).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(p1, p2, -p2, -p1).item() == pytest.approx(8.0)


def test_loss_is_fp32_and_sends_no_gradient_to_targets() -> None:
    p1, p2 = (torch.randn(3, 4, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    z1, z2 = (torch.randn(3, 4, requires_grad=True) for _ in range(2))
    loss = byol_loss(p1, p2, z1, z2)
    assert loss.dtype == torch.float32
    loss.backward()
    assert p1.grad is not None and z1.grad is None and z2.grad is None
