"""BYOL's regression loss at the reference scale.

Per view pair 2 - 2 cos(p_online(v1), z_target(v2)); the symmetric term (views swapped) is
*added*, then the mean is taken over the batch. Averaging the two terms instead halves the
gradient, which a peer measured as 51.4 % vs 62.4 % ImageNet linear accuracy.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def regression_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """2 - 2 cos per row, in fp32 (bf16 cosines lose the small differences BYOL learns from)."""
    p = F.normalize(prediction.float(), dim=-1)
    z = F.normalize(target.float(), dim=-1)
    return 2 - 2 * (p * z).sum(dim=-1)


def byol_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """Symmetric BYOL loss: online predictions p of each view regress the target projection z of the other."""
    return (regression_loss(p1, z2.detach()) + regression_loss(p2, z1.detach())).mean()
