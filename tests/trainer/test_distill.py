"""The CaSSLe-style distillation term (trainer/distill.py) on a tiny network."""

from __future__ import annotations

import io

import torch
from torch import nn

from trainer.distill import SnapshotDistiller

DIM = 8


def net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, DIM))


def views(n: int = 6) -> torch.Tensor:
    return torch.randn(n, 3, 2, 2, generator=torch.Generator().manual_seed(1))


def test_the_term_is_zero_against_itself_through_an_identity_predictor():
    online = net(0).eval()
    distiller = SnapshotDistiller(online, DIM, hidden=0)
    x = views()
    assert distiller.loss(online(x), x).abs().item() < 1e-5
    other = SnapshotDistiller(net(1), DIM, hidden=0)  # a different earlier state: the term is not zero
    assert other.loss(online(x), x).item() > 0.01


def test_gradient_reaches_the_online_net_and_predictor_never_the_frozen_snapshot():
    online = net(0)
    distiller = SnapshotDistiller(net(1), DIM, hidden=16).train()
    assert not distiller.snapshot.training and distiller.predictor.training
    frozen = {k: v.clone() for k, v in distiller.snapshot.state_dict().items()}
    params = list(online.parameters()) + [p for p in distiller.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.1)
    x = views()
    loss = distiller.loss(online(x), x, groups=2)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in online.parameters())
    assert all(p.grad is not None for p in distiller.predictor.parameters())
    assert all(p.grad is None and not p.requires_grad for p in distiller.snapshot.parameters())
    optimizer.step()
    after = distiller.snapshot.state_dict()
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)  # weights and BatchNorm statistics


def test_checkpoint_round_trip_and_pointing_at_an_earlier_state():
    online = net(0)
    distiller = SnapshotDistiller(net(1), DIM, hidden=16).eval()
    blob = io.BytesIO()
    torch.save(distiller.state_dict(), blob)
    blob.seek(0)
    again = SnapshotDistiller(net(2), DIM, hidden=16).eval()
    again.load_state_dict(torch.load(blob, weights_only=True))
    x = views()
    with torch.no_grad():
        assert torch.allclose(again.loss(online(x), x), distiller.loss(online(x), x))
    again.point_at(online.state_dict())  # e.g. a pinned version's weights
    assert all(torch.equal(a, b) for a, b in zip(again.snapshot.state_dict().values(), online.state_dict().values()))
    assert not any(p.requires_grad for p in again.snapshot.parameters())
