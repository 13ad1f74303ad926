"""Continuing a byol-pytorch 0.9.1 run: its learner `state_dict()` mapped onto ours.

Two sources for the state dict: byol-pytorch itself when it is installed (the `bench` extra), and,
so that CI without it still tests the mapping, `Replica`: the same module tree under the same
names (byol_pytorch.py 0.9.1: `BYOL.net`, `online_encoder` = NetWrapper with `.net` and
`.projector`, `target_encoder`, `online_predictor`; MLP = Sequential(Linear, BatchNorm1d, ReLU,
Linear); with simplicial embeddings the projector is Sequential(Sequential(Linear, BatchNorm1d),
SEM, MLP)). After loading, our online and target outputs must equal theirs on the same input.
"""

from __future__ import annotations

import copy
from typing import Callable

import pytest
import torch
from torch import nn

from trainer import BYOL
from trainer.encoders import TinyCNN
from trainer.image_checks import LearnerError

SIZES = dict(projection_size=16, projection_hidden_size=32)
SEM = dict(sem_num_simplices=4, sem_simplex_dim=8)  # byol-pytorch's default is 32 x 8; smaller keeps the test fast


def mlp(dim: int, out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))


class Simplicial(nn.Module):
    def __init__(self, simplex: int, temperature: float) -> None:
        super().__init__()
        self.simplex, self.temperature = simplex, temperature

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return (t.unflatten(-1, (-1, self.simplex)) / self.temperature).softmax(dim=-1).flatten(-2)


class NetWrapper(nn.Module):
    def __init__(self, net: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.projector = projector

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        representation = self.net.avgpool(self.net.features(x)).flatten(1)  # hidden_layer="avgpool"
        return self.projector(representation), representation


class Replica(nn.Module):
    """byol-pytorch 0.9.1's BYOL module tree, names and all, around TinyCNN at hidden_layer="avgpool"."""

    def __init__(self, net: nn.Module, simplicial: bool, simplices: int = 4, simplex: int = 8) -> None:
        super().__init__()
        dim, out, hidden = 4 * net.features[0].out_channels, SIZES["projection_size"], SIZES["projection_hidden_size"]
        self.net = net
        if simplicial:
            sem = simplices * simplex
            projector = nn.Sequential(
                nn.Sequential(nn.Linear(dim, sem), nn.BatchNorm1d(sem)), Simplicial(simplex, 0.1), mlp(sem, out, hidden)
            )
        else:
            projector = mlp(dim, out, hidden)
        self.online_encoder = NetWrapper(net, projector)
        self.target_encoder = copy.deepcopy(self.online_encoder)
        self.online_predictor = mlp(out, out, hidden)


def randomised(module: nn.Module, seed: int) -> nn.Module:
    """Every parameter and BatchNorm statistic drawn at random, so a wrong or missing mapping shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return module


def replica(simplicial: bool) -> Replica:
    torch.manual_seed(0)
    theirs = Replica(TinyCNN(width=8), simplicial)
    randomised(theirs.online_encoder, 1)
    randomised(theirs.online_predictor, 2)
    randomised(theirs.target_encoder, 3)  # a target that has moved away from the online weights
    return theirs.eval()


def ours(simplicial: bool, seed: int = 5) -> BYOL:
    torch.manual_seed(seed)
    extra = dict(use_simplicial_embeddings=True, **SEM) if simplicial else {}
    return BYOL(TinyCNN(width=8), image_size=16, hidden_layer="avgpool", **SIZES, **extra)


def assert_same_outputs(
    learner: BYOL, online: Callable, target: Callable, predictor: Callable, distinct_target: bool = True
) -> None:
    images = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    learner.eval()
    with torch.no_grad():
        their_projection, their_embedding = online(images)
        their_target, _ = target(images)
        their_prediction = predictor(their_projection)
        embedding = learner.online.backbone(images)
        projection = learner.online.projector(embedding)
        torch.testing.assert_close(embedding, their_embedding, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(projection, their_projection, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(learner.predictor(projection), their_prediction, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            learner.target.projector(learner.target.backbone(images)), their_target, rtol=1e-5, atol=1e-5
        )
    if distinct_target:
        assert not torch.allclose(projection, their_target), (
            "the test needs a target that differs from the online branch"
        )


@pytest.mark.slow
@pytest.mark.parametrize("simplicial", [False, True])
def test_a_replica_state_dict_loads_completely_and_gives_their_outputs(simplicial: bool) -> None:
    theirs = replica(simplicial)
    learner = ours(simplicial)
    report = learner.load_byol_pytorch(theirs.state_dict())
    assert report.unmapped == () and report.missing == ()
    assert report.loaded == len(learner.state_dict()) - 1  # everything but our own _extra_state
    assert_same_outputs(learner, theirs.online_encoder, theirs.target_encoder, theirs.online_predictor)
    assert torch.isfinite(learner.train()(torch.rand(4, 3, 20, 20)))  # and training continues from there


def test_a_missing_target_starts_as_the_online_branch() -> None:
    theirs = replica(False)
    state = {k: v for k, v in theirs.state_dict().items() if not k.startswith("target_encoder.")}
    learner = ours(False)
    report = learner.load_byol_pytorch(state)
    assert report.missing == () and "target" in report.notes
    assert_same_outputs(
        learner, theirs.online_encoder, theirs.online_encoder, theirs.online_predictor, distinct_target=False
    )


def test_what_cannot_be_mapped_is_reported_and_the_encoder_still_loads(caplog) -> None:
    theirs = replica(True)  # simplicial projector into a learner built without it
    learner = ours(False)
    projector_before = copy.deepcopy(learner.online.projector.state_dict())
    report = learner.load_byol_pytorch(theirs.state_dict())
    assert "online_encoder.projector.0.0.weight" in report.unmapped
    assert "online.projector.layers.0.weight" in report.missing
    assert "use_simplicial_embeddings=True" in report.notes
    assert "could not map" in caplog.text
    torch.testing.assert_close(learner.online.projector.state_dict(), projector_before)
    images = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(learner.eval().online.backbone(images), theirs.online_encoder(images)[1])
    with pytest.raises(LearnerError, match=r"could not map \d+ of byol-pytorch's tensors"):
        ours(False).load_byol_pytorch(theirs.state_dict(), strict=True)


def test_shape_mismatches_and_foreign_dicts_are_one_line_errors() -> None:
    theirs = replica(False)
    wider = BYOL(TinyCNN(width=8), image_size=16, hidden_layer="avgpool", projection_size=16, projection_hidden_size=64)
    with pytest.raises(LearnerError, match=r"online_encoder.projector.0.weight .* \(32, 32\) .* \(64, 32\)"):
        wider.load_byol_pytorch(theirs.state_dict())
    with pytest.raises(LearnerError, match="load_byol_pytorch"):
        ours(False).load_state_dict(theirs.state_dict())  # plain load_state_dict points at the mapping
    with pytest.raises(LearnerError, match="no byol-pytorch"):
        ours(False).load_byol_pytorch(ours(False).state_dict())


def test_the_real_byol_pytorch_state_dict_loads_and_gives_their_outputs() -> None:
    byol_pytorch = pytest.importorskip("byol_pytorch")
    torch.manual_seed(0)
    net = TinyCNN(width=8)
    theirs = byol_pytorch.BYOL(net, image_size=16, hidden_layer="avgpool", **SIZES, **SEM)
    opt = torch.optim.Adam(theirs.parameters(), lr=1e-2)
    for step in range(2):  # moves online, target and the BatchNorm statistics away from their start
        loss = theirs(torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(step)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        theirs.update_moving_average()
    learner = ours(True)
    report = learner.load_byol_pytorch(theirs.state_dict())
    assert report.unmapped == () and report.missing == ()
    theirs.eval()
    assert_same_outputs(learner, theirs.online_encoder, theirs.target_encoder, theirs.online_predictor)
