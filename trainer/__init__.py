"""Trainer package: the BYOL learner and its parts (views, heads, EMA), plus the continual loop's pieces.

`from trainer import BYOL` imports torch on first use only, so light modules of this package
(metrics, report) and the CLI's argument parsing stay fast.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BYOL"]


def __getattr__(name: str) -> Any:
    if name == "BYOL":
        from trainer.byol import BYOL

        return BYOL
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
