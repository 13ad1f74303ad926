"""Full-state checkpoints, written atomically, and a loader that survives a corrupt newest file.

A robot loses power mid-write; a half-written checkpoint must never be the one a restart reads.
So each file is written to a temp name in the same directory, fsynced, renamed over with
`os.replace`, and the directory fsynced; the loader walks from the newest file down and skips
(with a warning) any file it cannot read. The content is tensors and primitives only, so it loads
with `torch.load(weights_only=True)`: opening a checkpoint never executes code.

Content (format 1; keys stable, the export command rebuilds the learner from "config"):
{"format", "step", "learner", "optimizer", "scaler", "rng", "config", "counters", "buffer"}.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from agent.atomic import fsync_dir

FORMAT = 1
REQUIRED_KEYS = ("format", "step", "learner", "optimizer", "rng", "config", "counters")
_NAME = re.compile(r"^ckpt-(\d{9,})\.pt$")

log = logging.getLogger(__name__)


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"ckpt-{step:09d}.pt"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint file in the run, newest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found, reverse=True)


def capture_rng() -> dict[str, Any]:
    """Every RNG a resumed run must continue from, as tensors and primitives."""
    mt_name, mt_keys, mt_pos, mt_has_gauss, mt_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": mt_name,
            "keys": torch.from_numpy(np.asarray(mt_keys, dtype=np.int64)),
            "pos": int(mt_pos),
            "has_gauss": int(mt_has_gauss),
            "gauss": float(mt_gauss),
        },
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    npy = state["numpy"]
    np.random.set_state(
        (npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, state: dict[str, Any], keep: int) -> Path:
    """Atomically write `state` (must hold "step") as ckpt-{step}.pt and keep only the `keep` newest."""
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}")
    path = checkpoint_path(run_dir, int(state["step"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    for _, old in list_checkpoints(run_dir)[keep:]:
        old.unlink(missing_ok=True)
    for stale in path.parent.glob(".ckpt-*.pt.tmp-*"):  # left by a writer that was killed mid-write
        stale.unlink(missing_ok=True)
    return path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load one checkpoint file; raises ValueError when it is unreadable, truncated or not ours."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, KeyError) as exc:
        raise ValueError(f"{path.name} is unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise ValueError(f"{path.name} is not a byol-agent checkpoint (missing keys)")
    if state["format"] != FORMAT:
        raise ValueError(f"{path.name} has format {state['format']!r}, this version reads {FORMAT}")
    return state


def quarantine_newer(run_dir: Path, step: Optional[int]) -> list[Path]:
    """Rename checkpoints newer than `step` (all, if None) to *.corrupt: called by the trainer after
    resuming, so files it could not read neither shadow the new ones nor survive pruning in their place."""
    moved = []
    for found, path in list_checkpoints(run_dir):
        if step is None or found > step:
            target = path.with_name(path.name + ".corrupt")
            os.replace(path, target)
            log.warning("moved unreadable checkpoint %s aside as %s", path.name, target.name)
            moved.append(target)
    return moved


def load_latest_checkpoint(run_dir: Path) -> Optional[dict[str, Any]]:
    """The newest readable checkpoint of the run, skipping corrupt ones with a warning; None if none."""
    for step, path in list_checkpoints(run_dir):
        try:
            state = read_checkpoint(path)
        except ValueError as exc:
            log.warning("skipping checkpoint: %s", exc)
            continue
        if int(state["step"]) != step:
            log.warning("skipping checkpoint: %s says step %s", path.name, state["step"])
            continue
        state["path"] = str(path)
        return state
    return None
