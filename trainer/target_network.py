"""The online/target network pair of BYOL: the target as an EMA of the online branch, with its τ schedule.

`TargetNetworkModule` is the base of `trainer.byol.BYOL`: it holds what concerns the target network
alone, so the learner's file keeps the views, heads and loss. The target is state, not a parameter:
it is in `state_dict()` (keys `target.*`) and moves with `.to()`, but `parameters()` /
`named_parameters()` list only what an optimizer should train. It starts as a copy of the online
branch (parameters and BatchNorm buffers) at the first training forward or update
(`_target_fresh`), and otherwise changes only through `update_moving_average()` with τ from
`trainer.momentum.tau_at` (the paper's cosine schedule, arXiv 2006.07733 §3.2, or a constant).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Optional

import torch
from torch import nn

from trainer.image_checks import LearnerError
from trainer.momentum import ema_update, tau_at

if TYPE_CHECKING:
    from trainer.byol import Branch


class TargetNetworkModule(nn.Module):
    """The target network's part of a learner; the subclass sets the attributes below in its `__init__`."""

    online: "Branch"
    target: Optional["Branch"]  # None in SimSiam mode (use_momentum=False)
    _target_fresh: bool  # the target has not been copied from the online branch yet
    step: int  # EMA updates made, the τ schedule's clock
    tau_schedule: str
    tau_base: float
    tau_final: float
    tau_warmup_steps: int
    total_steps: Optional[int]

    @property
    def tau(self) -> float:
        """The EMA decay the next `update_moving_average()` will use."""
        return tau_at(
            self.step, self.tau_schedule, self.tau_base, self.tau_final, self.tau_warmup_steps, self.total_steps
        )

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """What an optimizer should train: online encoder, projector and predictor, never the target."""
        for _, param in self.named_parameters(recurse=recurse):
            yield param

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Parameter]]:
        target = {id(p) for p in self.target.parameters()} if self.target is not None else set()
        for name, param in super().named_parameters(prefix, recurse, remove_duplicate):
            if id(param) not in target:
                yield name, param

    @torch.no_grad()
    def update_moving_average(self) -> None:
        """One EMA step of the target towards the online branch, with the scheduled tau."""
        if self.target is None:
            raise LearnerError("use_momentum=False (SimSiam mode) has no target to update")
        if self._target_fresh:
            self._copy_online_to_target()
        ema_update(list(self.target.parameters()), list(self.online.parameters()), self.tau)
        self.step += 1

    def reset_moving_average(self) -> None:
        """Start the target again as a copy of the online branch (parameters and buffers) at the next
        training forward or update, as byol-pytorch's method of this name does: call it after loading
        weights into `learner.net` mid-run. Until then the online branch serves as the target."""
        if self.target is None:
            raise LearnerError("use_momentum=False (SimSiam mode) has no target to reset")
        self._target_fresh = True

    def _branch(self, which: str) -> "Branch":
        """The target or the online branch; the online one while the target has not been copied from it."""
        if which not in ("target", "online"):
            raise LearnerError(f"which must be 'target' or 'online'; got {which!r}")
        if which == "target" and self.target is not None and not self._target_fresh:
            return self.target
        return self.online

    @torch.no_grad()
    def _copy_online_to_target(self) -> None:
        """Target := online, parameters and buffers (BatchNorm running statistics and their counts)."""
        assert self.target is not None
        torch._foreach_copy_(list(self.target.parameters()), list(self.online.parameters()))
        torch._foreach_copy_(list(self.target.buffers()), list(self.online.buffers()))
        self._target_fresh = False
