"""Resuming a rank from the newest checkpoint: which part of it each rank reads, and restoring that part.

A single-process checkpoint holds one rank's RNGs, counters and replay buffer at its top level; a
multi-rank one holds them per rank under "ranks" (trainer/run_state.py's module docstring). Rank 0
alone reads the run directory; the other ranks receive the shared content by broadcast and their
own part by scatter, so no shared filesystem is needed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch

from agent.core.config import TrainConfig
from trainer.buffer import ReplayBuffer
from trainer.checkpoint import load_latest_checkpoint, quarantine_newer, restore_rng
from trainer.distributed import Ranks

log = logging.getLogger(__name__)


def read_newest(run_dir: Path, ranks: Ranks) -> tuple[Optional[dict[str, Any]], Optional[dict[str, Any]]]:
    """(the newest checkpoint's shared content, this rank's own part) on every rank; (None, None) if none.

    Rank 0 alone reads the run directory (and moves unreadable newer files aside); in a multi-rank run
    it broadcasts the shared content and scatters the per-rank parts, which exist only when the
    checkpoint was written by as many ranks as this run has. A collective in a multi-rank run.
    """
    ckpt = None
    if ranks.rank == 0:
        ckpt = load_latest_checkpoint(run_dir)
        quarantine_newer(run_dir, None if ckpt is None else int(ckpt["step"]))
    if ranks.solo:
        if ckpt is None or "ranks" in ckpt:  # a multi-rank checkpoint has no part for a single process
            return ckpt, None
        return ckpt, {"rng": ckpt["rng"], "counters": ckpt["counters"], "buffer": ckpt.get("buffer")}
    shared = None if ckpt is None else {k: v for k, v in ckpt.items() if k not in ("ranks", "buffer")}
    shared = ranks.broadcast(shared)
    if shared is None:
        return None, None
    parts = None
    if ckpt is not None:
        same = int(ckpt.get("world_size", 1)) == ranks.world_size
        parts = list(ckpt["ranks"]) if same else [None] * ranks.world_size
    return shared, ranks.scatter(parts)


def restart_rank_part(
    name: str,
    saved_world: int,
    ranks: Ranks,
    views: Optional[torch.Generator],
    fresh_views: Optional[torch.Tensor],
    train_cfg: TrainConfig,
) -> None:
    """Checkpoint `name` was written by `saved_world` ranks, not this run's number: weights, target, optimizer,
    step and the run's counters resume, but each rank's RNG states (and replay buffer) start afresh; the view
    generator goes back to `fresh_views`, its state before the learner's (rank 0's) was loaded. Rank 0 logs it."""
    if views is not None and fresh_views is not None:
        views.set_state(fresh_views)  # rank 0's view generator came with the learner: not ours
    if ranks.rank == 0:
        log.warning(
            "%s was written by %d rank(s) and this run has %d: weights, target, optimizer, step and the "
            "run's counters resume; each rank's RNG states%s start afresh",
            name,
            saved_world,
            ranks.world_size,
            " and replay buffer" if train_cfg.save_buffer else "",
        )


def restore_rank_part(
    part: dict[str, Any], sampler: torch.Generator, views: Optional[torch.Generator], buffer: ReplayBuffer
) -> None:
    """This rank's RNGs, batch sampler, view generator and replay buffer, as saved in `part` (its counters
    are the caller's: `trainer.run_state.counters_from(part["counters"])`)."""
    restore_rng(part["rng"])
    sampler.set_state(part["rng"]["sampler"])
    if part["rng"].get("views") is not None and views is not None:
        views.set_state(part["rng"]["views"])  # a single-process checkpoint has it in the learner's state
    if part.get("buffer") is not None:
        try:
            buffer.load_state_dict(part["buffer"])
        except ValueError as exc:
            log.warning("not restoring the saved replay buffer: %s", exc)
