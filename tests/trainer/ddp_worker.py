"""Run by test_ddp.py under torchrun: 2 ranks, gloo on CPU, BYOL wrapped in DDP as the docs tell users to.

Each rank starts from a different seed and sees different images; it saves what must agree
across ranks (online weights, target, step) and a check of the heads' synced BatchNorm. Then the
continual loop's TrainStep on the same process group: the loss it reports is the mean over the
ranks, and a non-finite loss on one rank makes every rank skip that update.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.core.config import TrainConfig  # noqa: E402
from trainer import BYOL  # noqa: E402
from trainer.distributed import RankInfo, Ranks  # noqa: E402
from trainer.encoders import TinyCNN  # noqa: E402
from trainer.heads import ViewBatchNorm1d  # noqa: E402
from trainer.train_step import TrainStep  # noqa: E402


def synced_batchnorm_error(rank: int, world: int) -> float:
    """Max |difference| between the synced BN (output and input gradient) and one plain BN over all ranks' rows."""
    x = torch.randn(5, 3, requires_grad=True)
    weight = torch.randn(5, 3)
    bn = ViewBatchNorm1d(3, sync=True)
    y = bn(x)
    (y * weight).sum().backward()
    xs, weights = [torch.empty_like(x) for _ in range(world)], [torch.empty_like(weight) for _ in range(world)]
    dist.all_gather(xs, x.detach())
    dist.all_gather(weights, weight)
    everything = torch.cat(xs).requires_grad_()
    plain = torch.nn.BatchNorm1d(3)
    expected = plain(everything)
    (expected * torch.cat(weights)).sum().backward()
    rows = slice(5 * rank, 5 * rank + 5)
    return max(
        (y - expected[rows]).abs().max().item(),
        (x.grad - everything.grad[rows]).abs().max().item(),
        (bn.running_var - plain.running_var).abs().max().item(),
    )


def shared_nan_skip(rank: int, world: int) -> dict:
    """Two TrainStep updates under DDP; before the second, rank 1 alone poisons its own copy of a weight."""
    torch.manual_seed(7)
    learner = BYOL(
        TinyCNN(width=4), image_size=16, hidden_layer="avgpool", projection_size=8, projection_hidden_size=16
    )
    step = TrainStep(
        learner,
        torch.optim.Adam(learner.parameters(), lr=1e-2),
        TrainConfig(),
        torch.device("cpu"),
        Ranks(RankInfo(rank, world)),
    )
    images = torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(rank))
    first = step(images)
    if rank == 1:
        with torch.no_grad():
            next(learner.net.parameters()).fill_(float("nan"))
    second = step(images)
    return {
        "first": first,
        "second": second,
        "streak": step.nan_streak,
        "step": step.step,
        "weights_finite": all(bool(torch.isfinite(p).all()) for p in learner.online.parameters()),
    }


def main(out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(100 + rank)
    learner = BYOL(
        TinyCNN(width=4), image_size=16, hidden_layer="avgpool", projection_size=8, projection_hidden_size=16
    )
    opt = torch.optim.Adam(learner.parameters(), lr=1e-2)
    ddp = DDP(learner)  # no find_unused_parameters: fc (after the hidden layer) is registered as ignored
    losses = []
    for _ in range(3):
        loss = ddp(torch.rand(4, 3, 16, 16))
        opt.zero_grad()
        loss.backward()
        opt.step()
        ddp.module.update_moving_average()
        losses.append(loss.item())
    torch.save(
        {
            "losses": losses,
            "step": learner.step,
            "synced_heads": all(m.sync for m in learner.modules() if isinstance(m, ViewBatchNorm1d)),
            "online": {n: p.detach() for n, p in learner.online.named_parameters()},
            "target": {n: p.detach() for n, p in learner.target.named_parameters()},
            "fc": learner.net.fc.weight.detach(),
            "synced_bn_error": synced_batchnorm_error(rank, world),
            "nan": shared_nan_skip(rank, world),
        },
        out / f"rank{rank}.pt",
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
