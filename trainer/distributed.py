"""Multi-rank training under torchrun: which rank this process is, its process group, its collectives.

`torchrun --nproc-per-node N -m agent.cli train ...` starts one trainer per rank. Each finds its place
in the environment torchrun sets (`rank_from_env`: RANK, WORLD_SIZE, LOCAL_RANK; MASTER_ADDR/PORT for
the rendezvous) and `join`s the default process group: nccl with device cuda:LOCAL_RANK on CUDA, gloo
on the CPU, every collective bounded by `train.collective_timeout_s`. `Ranks` is all the trainer sees:
rank, world size, device, DDP wrapping and the few collectives the continual loop uses (a float64 sum,
the mean of a loss, a gather to rank 0, a broadcast and a scatter from rank 0).

At world size 1 (no torchrun, or torchrun with one process) `Ranks` never touches torch.distributed:
every method answers locally, so a single process runs exactly as it did before ranks existed.

Invariant the callers keep: every rank reaches the same collectives in the same order (the loop
decides everything collective from one agreed sum per turn, trainer/lockstep.py), so no rank waits
on a collective another rank decided to skip. A collective that fails anyway, because a peer died
(gloo raises as soon as its connection drops) or stalled past the timeout, raises `CollectiveError`
(one line): the rank cannot checkpoint without its peers, so it stops; `torchrun --max-restarts`
then restarts the group, which resumes from the last checkpoint. On CUDA the object collectives
(checkpoint parts, replay buffers) run on a gloo side group, so pickled buffers never pass through
GPU memory.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator, Mapping, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from agent.core.errors import ByolAgentError, ConfigError

# Words in the messages of collective failures that torch raises as plain RuntimeError (gloo's
# transport errors and timeouts); anything else raised inside a training step is a bug, not a peer.
_COLLECTIVE_MARKERS = ("gloo", "nccl", "connection closed", "connection reset", "broken pipe", "timed out")


class CollectiveError(ByolAgentError):
    """A collective with the other ranks failed (a peer died or stalled); this rank cannot go on alone."""


@dataclass(frozen=True)
class RankInfo:
    """This process's place in a run: global rank, number of ranks, and rank on its own machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def rank_from_env(environ: Optional[Mapping[str, str]] = None) -> RankInfo:
    """The rank torchrun gave this process (RANK, WORLD_SIZE, LOCAL_RANK), or `RankInfo()` outside torchrun.

    Raises ConfigError (one line) when the variables are present but not integers or not consistent
    (rank outside 0..WORLD_SIZE-1, WORLD_SIZE missing while RANK is set).
    """
    env = os.environ if environ is None else environ
    present = [name for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if env.get(name, "") != ""]
    if not present:
        return RankInfo()
    values: dict[str, int] = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        raw = env.get(name, "")
        if raw == "":
            if name == "LOCAL_RANK":
                values[name] = values["RANK"]
                continue
            raise ConfigError(
                f"{name} is not set while {', '.join(present)} is: start multi-rank training with torchrun"
            )
        try:
            values[name] = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not an integer (torchrun sets it; do not set it by hand)") from None
    rank, world, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local} do not describe a rank of a run")
    return RankInfo(rank=rank, world_size=world, local_rank=local)


def is_collective_failure(exc: BaseException) -> bool:
    """Whether `exc` is a failed collective (a peer gone or stalled) rather than a fault of this rank."""
    if isinstance(exc, dist.DistError):
        return True
    return isinstance(exc, RuntimeError) and any(word in str(exc).lower() for word in _COLLECTIVE_MARKERS)


class Ranks:
    """The ranks of one run as this process sees them; see the module docstring.

    Build with `join` (multi-rank) or `Ranks()` (one process: `SOLO`). `device` is where this rank
    trains (cuda:LOCAL_RANK or the CPU); for a single process it is unused (the trainer resolves
    its own). `broken` turns True once a collective failed: later calls would only fail again.
    """

    def __init__(
        self,
        info: RankInfo = RankInfo(),
        device: torch.device = torch.device("cpu"),
        objects_group: Optional[Any] = None,
    ) -> None:
        self.rank, self.world_size, self.local_rank = info.rank, info.world_size, info.local_rank
        self.device = device
        self._objects = objects_group  # the gloo side group for object collectives on CUDA (None: default group)
        self.broken = False

    @property
    def solo(self) -> bool:
        """One process, no process group: nothing here runs a collective."""
        return self.world_size == 1

    def __repr__(self) -> str:
        return f"rank {self.rank} of {self.world_size}"

    # -- collectives ------------------------------------------------------------------------------

    @contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Turn a failed collective inside the block (DDP's, the heads' synced BatchNorm) into CollectiveError."""
        if self.solo:
            yield
            return
        try:
            yield
        except Exception as exc:
            if not is_collective_failure(exc):
                raise
            raise self._failed(what, exc) from None

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over the ranks (float64: integers stay exact up to 2**53); as-is at world size 1."""
        if self.solo:
            return [float(v) for v in values]
        tensor = torch.tensor(list(values), dtype=torch.float64)
        with self._collective("the loop's agreement"):
            dist.all_reduce(tensor, group=self._objects)
        return tensor.tolist()

    def mean(self, value: torch.Tensor) -> float:
        """The mean of a scalar tensor over the ranks, as a float (NaN or inf on any rank: not finite on all)."""
        if self.solo:
            return float(value)
        total = value.detach().float().reshape(1).clone()
        with self._collective("the loss all_reduce"):
            dist.all_reduce(total)
        return float(total) / self.world_size

    def gather(self, obj: Any) -> Optional[list[Any]]:
        """Every rank's `obj` in rank order on rank 0 (None elsewhere); [obj] at world size 1."""
        if self.solo:
            return [obj]
        out: Optional[list[Any]] = [None] * self.world_size if self.rank == 0 else None
        with self._collective("gathering to rank 0"):
            dist.gather_object(obj, out, dst=0, group=self._objects)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (what the others pass is ignored); `obj` at world size 1."""
        if self.solo:
            return obj
        box = [obj if self.rank == 0 else None]
        with self._collective("the broadcast from rank 0"):
            dist.broadcast_object_list(box, src=0, group=self._objects)
        return box[0]

    def scatter(self, objs: Optional[Sequence[Any]]) -> Any:
        """Item `rank` of rank 0's list `objs` (one item per rank; the others pass None); objs[0] at world size 1."""
        if self.solo:
            return None if objs is None else objs[0]
        if self.rank == 0 and (objs is None or len(objs) != self.world_size):
            raise ValueError(f"scatter needs one object per rank ({self.world_size})")
        out: list[Any] = [None]
        with self._collective("the scatter from rank 0"):
            parts = list(objs) if self.rank == 0 and objs is not None else None  # rank 0 has objs: checked above
            dist.scatter_object_list(out, parts, src=0, group=self._objects)
        return out[0]

    def wrap(self, module: nn.Module) -> nn.Module:
        """`module` under DistributedDataParallel in a multi-rank run (its weights become rank 0's), else itself."""
        if self.solo:
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        with self._collective("wrapping the learner in DDP"):
            return DistributedDataParallel(module, device_ids=device_ids)

    def close(self) -> None:
        """Leave the process group (after a clean end; a broken group is left to the process exit)."""
        if not self.solo and not self.broken and dist.is_initialized():
            dist.destroy_process_group()

    @contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        try:
            yield
        except (RuntimeError, dist.DistError) as exc:
            raise self._failed(what, exc) from None

    def _failed(self, what: str, exc: BaseException) -> CollectiveError:
        self.broken = True
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return CollectiveError(
            f"rank {self.rank} of {self.world_size}: {what} failed, another rank is gone or stalled ({first}); "
            "stopping without a checkpoint (torchrun --max-restarts resumes the group from the last one)"
        )


SOLO = Ranks()


def join(info: RankInfo, device: torch.device, timeout_s: float) -> Ranks:
    """Join the run's process group as `info` says (nothing to join at world size 1: `Ranks(info, device)`).

    `device`: the trainer's resolved device; on CUDA each rank takes cuda:LOCAL_RANK and nccl, on the
    CPU gloo. Raises ConfigError when LOCAL_RANK names a GPU this machine lacks, CollectiveError (one
    line) when the rendezvous fails (no MASTER_ADDR, a peer that never comes, `timeout_s` passed).
    """
    if info.world_size == 1:
        return Ranks(info, device)
    timeout = timedelta(seconds=timeout_s)
    backend = "gloo"
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if info.local_rank >= count:
            raise ConfigError(
                f"LOCAL_RANK {info.local_rank} needs a GPU cuda:{info.local_rank}; this machine has {count}"
            )
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    try:
        # torchrun's store outlives a restart of the group (--max-restarts): without a prefix per attempt the
        # restarted ranks would read the dead ranks' addresses from it and fail to connect.
        store, _, _ = next(dist.rendezvous("env://", rank=info.rank, world_size=info.world_size, timeout=timeout))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"byol-agent/attempt-{attempt}/", store)
        dist.init_process_group(backend, store=store, rank=info.rank, world_size=info.world_size, timeout=timeout)
        objects = dist.new_group(backend="gloo", timeout=timeout) if backend == "nccl" else None
    except (RuntimeError, ValueError, dist.DistError) as exc:  # ValueError: no MASTER_ADDR / MASTER_PORT
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CollectiveError(
            f"rank {info.rank} of {info.world_size}: cannot join the {backend} process group ({first}); start with "
            "torchrun"
        ) from None
    return Ranks(info, device, objects)
