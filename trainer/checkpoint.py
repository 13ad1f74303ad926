"""Full-state checkpoints, written atomically, and a loader that survives a corrupt newest file.

A robot loses power mid-write; a half-written checkpoint must never be the one a restart reads.
So each file is written to a temp name in the same directory, fsynced, renamed over with
`os.replace`, and the directory fsynced; the loader walks from the newest file down and skips
(with a warning) any file it cannot read. The content is tensors and primitives only, so it loads
with `torch.load(weights_only=True)`: opening a checkpoint never executes code.

Trusting a file that loads is not enough: a flipped byte inside a tensor's storage loads fine. So
format 2 stores "checksum", a SHA-256 over the whole content (every tensor's dtype, shape and
bytes, every key and primitive, in a fixed order), recomputed on load; floating-point learner and
optimizer tensors must also be finite. A file that fails any check is skipped like a torn one.

Content (format 2; keys stable, the export command rebuilds the learner from "config"):
{"format", "step", "learner", "optimizer", "rng", "config", "counters", "buffer", "export_frames", "checksum"}
(bf16 autocast needs no loss scaler, so there is none to save). "export_frames" (optional, uint8
NHWC, None when "buffer" is saved): a sample of the replay buffer (rank 0's) for an exporter working
from checkpoints to verify and calibrate on. A multi-rank run adds "world_size"
and "ranks" (one part per rank: its RNGs, counters, buffer, weights digest; trainer/run_state.py),
with "counters" the whole run's, "rng" rank 0's and "buffer" None (`saved_buffer` finds rank 0's).
Format 1 (before checksums) still loads, with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from agent.core.atomic import fsync_dir, remove_stale_temps, temp_name
from agent.core.errors import StorageError

FORMAT = 2
READABLE_FORMATS = (1, 2)
CHECKED_KEYS = ("learner", "optimizer")  # floating-point tensors here must be finite
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
    """Atomically write `state` (must hold "step") as ckpt-{step}.pt and keep only the `keep` newest.

    Raises StorageError (nothing replaced, no temp file left) when the file cannot be written, e.g.
    on a full disk: the previous checkpoints stay as they were.
    """
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}")
    state = {k: v for k, v in state.items() if k not in ("checksum", "path")}
    state["format"] = FORMAT
    state["checksum"] = content_checksum(state)
    path = checkpoint_path(run_dir, int(state["step"]))
    tmp = path.with_name(temp_name(path.name))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except (OSError, RuntimeError) as exc:  # torch.save reports a failed write as RuntimeError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise StorageError(f"cannot write checkpoint {path.name}: {first}") from None
    finally:
        tmp.unlink(missing_ok=True)
    for _, old in list_checkpoints(run_dir)[keep:]:
        old.unlink(missing_ok=True)
    remove_stale_temps(path.parent)  # left by a writer that was killed mid-write
    return path


def content_checksum(state: dict[str, Any]) -> str:
    """SHA-256 (hex) of a checkpoint's content, every key but "checksum" and "path", in a fixed order."""
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in state.items() if k not in ("checksum", "path")})
    return digest.hexdigest()


def weights_digest(learner: torch.nn.Module) -> str:
    """SHA-256 (hex) of every parameter of `learner`, the EMA target's included, but not its buffers or
    extra state: what the ranks of a DDP run hold identically (BatchNorm statistics follow each rank's
    own last batch, and each rank has its own view generator)."""
    # nn.Module's own listing: BYOL's named_parameters() leaves the target out (it is not trained)
    return content_checksum(dict(torch.nn.Module.named_parameters(learner)))


def _feed(digest: "hashlib._Hash", obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        flat = obj.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"T{obj.dtype}{tuple(obj.shape)}".encode())
        if flat.numel():
            digest.update(flat.view(torch.uint8).numpy().data)  # a memoryview: no copy of the storage
    elif isinstance(obj, dict):
        digest.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            _feed(digest, key)
            _feed(digest, obj[key])
    elif isinstance(obj, (list, tuple)):
        digest.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}".encode())
        for item in obj:
            _feed(digest, item)
    elif isinstance(obj, (bytes, bytearray)):
        digest.update(b"B%d:" % len(obj) + bytes(obj))
    else:  # str, int, float, bool, None: repr is exact and type-tagged enough (1 vs 1.0 vs True vs '1')
        text = f"{type(obj).__name__}:{obj!r}".encode()
        digest.update(b"P%d:" % len(text) + text)


def _non_finite(obj: Any, where: str) -> Optional[str]:
    """Path of the first floating-point tensor under `obj` holding NaN or inf, or None."""
    if isinstance(obj, torch.Tensor):
        return where if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        found = _non_finite(value, f"{where}.{key}")
        if found:
            return found
    return None


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load one checkpoint file and check it; ValueError (naming the file and the fault) when it is
    unreadable, truncated, not ours, fails its checksum or holds non-finite weights."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only: garbage raises many types, none runs code
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise ValueError(f"{path.name} is unreadable ({type(exc).__name__}: {first})") from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise ValueError(f"{path.name} is not a byol-agent checkpoint (missing keys)")
    if not isinstance(state["step"], int) or isinstance(state["step"], bool) or state["step"] < 0:
        raise ValueError(f"{path.name} has step {state['step']!r}, not a step count")
    if state["format"] not in READABLE_FORMATS:
        raise ValueError(f"{path.name} has format {state['format']!r}, this version reads {READABLE_FORMATS}")
    if state["format"] == 1:
        log.warning("%s was written before checkpoints carried checksums; it cannot be verified", path.name)
    else:
        try:
            actual = content_checksum(state)
        except Exception as exc:  # a damaged structure the walk cannot read
            raise ValueError(f"{path.name} is damaged ({type(exc).__name__} while verifying it)") from None
        if state.get("checksum") != actual:
            raise ValueError(f"{path.name} fails its checksum: its content changed after it was written")
    for key in CHECKED_KEYS:
        try:
            bad = _non_finite(state[key], key)
        except RecursionError:  # only a crafted file nests this deep
            raise ValueError(f"{path.name} is damaged (its {key} state nests too deep)") from None
        if bad:
            raise ValueError(f"{path.name} holds non-finite values (NaN/inf) in {bad}")
    return state


def saved_buffer(state: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The replay buffer a checkpoint saved (`train.save_buffer`): its own, or rank 0's in a multi-rank one."""
    if state.get("buffer") is not None:
        return state["buffer"]
    ranks = state.get("ranks")
    return ranks[0].get("buffer") if isinstance(ranks, list) and ranks and isinstance(ranks[0], dict) else None


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
