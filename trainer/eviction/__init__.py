"""Which frame a full replay buffer gives up: a registry of eviction policies, one file each.

A policy sees the buffer's per-slot bookkeeping (`Slots`) and names a victim slot; the buffer
(trainer/buffer.py) owns the pixels and the locking. Temporally correlated video ruins naive
streaming SSL and no one policy wins on every stream (benchmarks/RESULTS.md, correlated streams),
so the policy is a config choice (`buffer.policy`):
- `fifo` (fifo.py): the oldest frame goes.
- `reservoir` (reservoir.py, Vitter's algorithm R): every frame seen so far is kept with equal probability.
- `min_redundancy` (min_redundancy.py): the frame most similar to its nearest stored neighbour in
  the target encoder's embedding space goes.
- `stratified` (stratified.py): the stream's stretches of arrival keep equal shares (rooms after rooms).
A new policy: one file with an `EvictionPolicy` subclass under `@register_policy`, imported below.
"""

from trainer.eviction.base import EvictionPolicy, Slots
from trainer.eviction.fifo import FifoPolicy  # importing a policy's module registers it
from trainer.eviction.min_redundancy import MinRedundancyPolicy
from trainer.eviction.registry import list_policies, make_policy, register_policy
from trainer.eviction.reservoir import ReservoirPolicy
from trainer.eviction.stratified import StratifiedPolicy

__all__ = [
    "EvictionPolicy",
    "FifoPolicy",
    "MinRedundancyPolicy",
    "ReservoirPolicy",
    "Slots",
    "StratifiedPolicy",
    "list_policies",
    "make_policy",
    "register_policy",
]
