"""The eviction-policy registry: `buffer.policy` name -> policy class (timm's register_model pattern).

A new policy is one file in trainer/eviction/ defining an `EvictionPolicy` subclass decorated with
`@register_policy`, plus its import in trainer/eviction/__init__.py and its name in
`BufferConfig.policy`; tests/trainer/test_eviction_contract.py runs every registered policy.
"""

from __future__ import annotations

from typing import TypeVar

from agent.core.config import BufferConfig
from agent.core.errors import ConfigError
from trainer.eviction.base import EvictionPolicy

_POLICIES: dict[str, type[EvictionPolicy]] = {}
P = TypeVar("P", bound=type[EvictionPolicy])


def register_policy(cls: P) -> P:
    """Class decorator: make `cls` buildable as `buffer.policy: <cls.name>`. Raises ValueError on a duplicate name."""
    if cls.name in _POLICIES:
        raise ValueError(f"eviction policy {cls.name!r} is registered twice")
    _POLICIES[cls.name] = cls
    return cls


def list_policies() -> list[str]:
    """Names of the registered policies, sorted."""
    return sorted(_POLICIES)


def make_policy(cfg: BufferConfig, capacity: int, seed: int) -> EvictionPolicy:
    """The policy `cfg.policy` names, for a buffer of `capacity` slots. Raises ConfigError for an unknown name."""
    try:
        cls = _POLICIES[cfg.policy]
    except KeyError:
        raise ConfigError(
            f"buffer.policy {cfg.policy!r} is not a registered policy; known: {', '.join(list_policies())}"
        ) from None
    return cls(capacity, seed)
