"""Projector and predictor heads, declared as data and built by one function.

A head is `MLPSpec`: hidden widths (each Linear -> BatchNorm -> ReLU) then a Linear to the output.
BYOL's projector and predictor are `byol_head` (the paper's Linear(d, 4096) -> BN -> ReLU ->
Linear(4096, 256)); SimSiam mode's projector is `simsiam_projector`, as in byol-pytorch. Either
may start with byol-pytorch's simplicial embedding (`MLPSpec.simplicial`: Linear -> BN -> softmax
over groups of features, Lavoie et al., arXiv 2204.00616; on by default in byol-pytorch 0.9, off
here), laid out so that a byol-pytorch projector's weights map onto it one to one.

Both views go through a head as one stacked batch (one large matmul per Linear, about 30 % faster
on a CPU than one call per view), while `ViewBatchNorm1d` still normalises each view with its own
batch statistics, so the result is the same as running the views one at a time, as the reference does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class MLPSpec:
    """A head: optionally a simplicial embedding, then `hidden` widths (each Linear -> BN -> ReLU), then
    Linear to `out` (+ BN without affine if out_bn).

    `simplicial` = (simplices L, simplex size V, temperature): Linear(in, L*V) -> BN -> softmax over
    each of the L groups of V features at the temperature, before the rest (byol-pytorch's SEM).
    """

    hidden: tuple[int, ...]
    out: int
    bias: bool = True
    out_bn: bool = False
    simplicial: Optional[tuple[int, int, float]] = None


def byol_head(hidden: int, out: int, simplicial: Optional[tuple[int, int, float]] = None) -> MLPSpec:
    """The BYOL paper's projector and predictor (with byol-pytorch's simplicial embedding first, if given)."""
    return MLPSpec(hidden=(hidden,), out=out, simplicial=simplicial)


def simsiam_projector(hidden: int, out: int, simplicial: Optional[tuple[int, int, float]] = None) -> MLPSpec:
    """SimSiam's three-layer projector (no biases, BN on the output), byol-pytorch's use_momentum=False head."""
    return MLPSpec(hidden=(hidden, hidden), out=out, bias=False, out_bn=True, simplicial=simplicial)


class SimplicialEmbedding(nn.Module):
    """Softmax over consecutive groups of `simplex` features at `temperature`: (N, L*V) -> (N, L*V).

    Lavoie et al., "Simplicial Embeddings in Self-Supervised Learning" (arXiv 2204.00616), as
    byol-pytorch 0.9.1's `SEM`.
    """

    def __init__(self, simplex: int, temperature: float) -> None:
        super().__init__()
        self.simplex = simplex
        self.temperature = temperature

    def forward(self, x: Tensor) -> Tensor:
        return (x.unflatten(-1, (-1, self.simplex)) / self.temperature).softmax(dim=-1).flatten(-2)


class _SumAcrossRanks(torch.autograd.Function):
    """all_reduce(SUM) with a gradient: the gradient of each rank's input is the sum of every rank's
    output gradient (what torch.distributed.nn.functional.all_reduce does; that function is deprecated
    in favour of a private module, so the few lines live here)."""

    @staticmethod
    def forward(ctx: object, tensor: Tensor) -> Tensor:  # noqa: ARG004
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> Tensor:  # noqa: ARG004
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce(tensor: Tensor) -> Tensor:
    """The sum of `tensor` over every rank of the default process group, differentiable."""
    return _SumAcrossRanks.apply(tensor)


def distributed_world() -> bool:
    """True inside an initialised process group of more than one rank (where heads need synced BN)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class ViewBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over a batch of `views` stacked groups: statistics per group, optionally across ranks.

    With `sync=True` inside a multi-rank process group, each group's mean and variance span every
    rank through one differentiable all_reduce; unlike torch.nn.SyncBatchNorm this also runs on CPU
    tensors (gloo), which the DDP test and CPU-only robots need.
    """

    def __init__(self, features: int, affine: bool = True, sync: bool = False) -> None:
        super().__init__(features, affine=affine)
        self.sync = sync

    def forward(self, x: Tensor, views: int = 1) -> Tensor:
        norm = self._synced if self.sync and self.training and distributed_world() else super().forward
        if views == 1:
            return norm(x)
        return torch.cat([norm(group) for group in x.chunk(views)])

    def _synced(self, x: Tensor) -> Tensor:
        xf = x.float()
        count = torch.full((1,), float(x.shape[0]), device=x.device)
        totals = all_reduce(torch.cat([xf.sum(0), (xf * xf).sum(0), count]))
        features = x.shape[1]
        n = totals[-1]
        mean = totals[:features] / n
        var = (totals[features : 2 * features] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            # set by nn.BatchNorm1d's constructor whenever track_running_stats is on
            assert (
                self.running_mean is not None and self.running_var is not None and self.num_batches_tracked is not None
            )
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1), momentum)
        y = (xf - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y.to(x.dtype)


class MLP(nn.Module):
    """A head built from an MLPSpec; `forward(x, views)` takes `views` equal groups stacked on dim 0."""

    def __init__(self, in_dim: int, spec: MLPSpec, sync_batchnorm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        if spec.simplicial is not None:
            simplices, simplex, temperature = spec.simplicial
            width = simplices * simplex
            layers += [
                nn.Linear(in_dim, width),
                ViewBatchNorm1d(width, sync=sync_batchnorm),
                SimplicialEmbedding(simplex, temperature),
            ]
        for hidden in spec.hidden:
            layers += [
                nn.Linear(width, hidden, bias=spec.bias),
                ViewBatchNorm1d(hidden, sync=sync_batchnorm),
                nn.ReLU(inplace=True),
            ]
            width = hidden
        layers.append(nn.Linear(width, spec.out, bias=spec.bias))
        if spec.out_bn:
            layers.append(ViewBatchNorm1d(spec.out, affine=False, sync=sync_batchnorm))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor, views: int = 1) -> Tensor:
        for layer in self.layers:
            x = layer(x, views) if isinstance(layer, ViewBatchNorm1d) else layer(x)
        return x
