"""LARS (You et al. 2017), the BYOL paper's optimiser, with no host-device sync per parameter.

Each step scales a tensor's update by the trust ratio eta * ||w|| / ||g + wd * w||. Peers compute
it tensor by tensor with Python comparisons on device tensors, which forces one device sync per
parameter; here the norms of a whole group come from one `torch._foreach_norm`, the ratios from
one `torch.where`, and the update from foreach ops, so a step never waits for the device.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch import Tensor


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratios; a group with `lars_exclude=True` gets plain SGD.

    Put biases and normalisation parameters in an excluded group with weight_decay=0, as the
    paper does (`trainer.learner_factory.build_optimizer` does this).
    """

    def __init__(
        self,
        params: Union[Iterable[Tensor], Iterable[dict[str, Any]]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
        lars_exclude: bool = False,
    ) -> None:
        if lr <= 0 or momentum < 0 or weight_decay < 0 or eta <= 0:
            raise ValueError(
                f"invalid LARS settings: lr={lr}, momentum={momentum}, weight_decay={weight_decay}, eta={eta}"
            )
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=lars_exclude)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> Optional[Tensor]:  # type: ignore[override]  # torch overloads step() on closure; this returns its loss like torch.optim.SGD
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = tuple(p.grad for p in params)
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            if not group["lars_exclude"]:
                weight_norm = torch.stack(torch._foreach_norm(params))
                grad_norm = torch.stack(torch._foreach_norm(grads))
                usable = (weight_norm > 0) & (grad_norm > 0)
                trust = torch.where(usable, group["eta"] * weight_norm / grad_norm, torch.ones_like(weight_norm))
                grads = torch._foreach_mul(grads, list(trust.unbind()))
            for param in params:
                if "momentum_buffer" not in self.state[param]:
                    self.state[param]["momentum_buffer"] = torch.zeros_like(param)
            buffers = [self.state[param]["momentum_buffer"] for param in params]
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_add_(buffers, grads)
            torch._foreach_add_(params, buffers, alpha=-group["lr"])
        return loss
