"""Trainer package: the BYOL learner and its parts (views, heads, EMA), plus the continual loop's pieces."""

from trainer.byol import BYOL

__all__ = ["BYOL"]
