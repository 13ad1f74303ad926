"""byol-pytorch 0.9.1 learner state dicts, mapped onto ours so a run of the most-used wrapper can continue.

Their module tree (byol_pytorch/byol_pytorch.py 0.9.1), and where each part goes here:

    net.*                                the wrapped net again (the same tensors as online_encoder.net.*)
    online_encoder.net.*              -> online.backbone.net.*
    online_encoder.projector.{i}.*    -> online.projector.layers.{i}.*      MLP = Seq(Linear, BN, ReLU, Linear)
    online_encoder.projector.0.{j}.*  -> online.projector.layers.{j}.*      with simplicial embeddings (their default):
    online_encoder.projector.2.{i}.*  -> online.projector.layers.{3 + i}.*  Seq(Seq(Linear, BN), SEM, MLP)
    target_encoder.*                  -> target.*                           (absent with use_momentum=False or after
                                                                            reset_moving_average: online is copied)
    online_predictor.{i}.*            -> predictor.layers.{i}.*

SimSiam mode's projector (their SimSiamMLP) has the same indices as ours. They keep no EMA step
count, so the learner's tau schedule starts again from its own step.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Mapping, Optional

from torch import Tensor

from trainer.image_checks import LearnerError

log = logging.getLogger(__name__)
_ENCODERS = (("online_encoder.", "online."), ("target_encoder.", "target."))
_SIMPLICIAL_KEY = re.compile(r"(online|target)_encoder\.projector\.0\.0\.weight$")


@dataclass(frozen=True)
class ByolPytorchLoad:
    """What `BYOL.load_byol_pytorch` did: tensors loaded, their keys left unused, our keys left as they were."""

    loaded: int
    unmapped: tuple[str, ...]
    missing: tuple[str, ...]
    notes: str


def is_byol_pytorch_state(state: Mapping[str, object]) -> bool:
    """True for a byol-pytorch `BYOL.state_dict()` (its online_encoder / online_predictor keys)."""
    return any(key.startswith(("online_encoder.", "online_predictor.")) for key in state)


def _strip_wrapper(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Keys without the `module.` prefix a DataParallel / DDP wrapper adds to every one."""
    if state and all(key.startswith("module.") for key in state):
        return {key[len("module.") :]: value for key, value in state.items()}
    return dict(state)


def _projector_key(rest: str, simplicial: bool) -> Optional[str]:
    """Our `projector.layers.*` suffix for their `projector.*` suffix `rest`."""
    if not simplicial:
        return f"projector.layers.{rest}"
    embedder = re.fullmatch(r"0\.([01])\.(.+)", rest)
    if embedder:
        return f"projector.layers.{embedder.group(1)}.{embedder.group(2)}"
    head = re.fullmatch(r"2\.(\d+)\.(.+)", rest)
    if head:
        return f"projector.layers.{3 + int(head.group(1))}.{head.group(2)}"
    return None


def plan(
    theirs: Mapping[str, Tensor], ours: Mapping[str, Tensor], our_simplicial: bool
) -> tuple[dict[str, Tensor], tuple[str, ...], tuple[str, ...], str]:
    """(our key -> their tensor, their unused keys, our keys left unset, notes) for a byol-pytorch state dict.

    Raises LearnerError when `theirs` is not byol-pytorch's, or a mapped tensor's shape differs from ours.
    """
    theirs = _strip_wrapper(theirs)
    if not is_byol_pytorch_state(theirs):
        hint = "; it looks like ours: use load_state_dict" if any(k.startswith("online.") for k in theirs) else ""
        raise LearnerError(f"the state dict holds no byol-pytorch keys (online_encoder.*, online_predictor.*){hint}")
    their_simplicial = any(_SIMPLICIAL_KEY.match(key) for key in theirs)
    has_target = any(key.startswith("target_encoder.") for key in theirs)
    notes: list[str] = ["byol-pytorch keeps no EMA step count: the tau schedule restarts at this learner's step"]
    if their_simplicial != our_simplicial:
        notes.append(
            f"their projector {'has' if their_simplicial else 'has no'} simplicial embedding and ours "
            f"{'has' if our_simplicial else 'has none'}: build BYOL with "
            f"use_simplicial_embeddings={their_simplicial} (and their sem_* sizes) to load it"
        )
    if not has_target and any(key.startswith("target.") for key in ours):
        notes.append("their state has no target_encoder: the target starts as a copy of their online branch")

    mapping: dict[str, Tensor] = {}
    unmapped: list[str] = []
    for key, value in theirs.items():
        if key.startswith("net.") and f"online_encoder.{key}" in theirs:
            continue  # the same tensors as online_encoder.net.*
        targets = _our_keys(key, their_simplicial, our_simplicial, has_target)
        targets = [t for t in targets if t in ours]
        if not targets:
            unmapped.append(key)
            continue
        for target in targets:
            if tuple(ours[target].shape) != tuple(value.shape):
                raise LearnerError(
                    f"byol-pytorch's {key} has shape {tuple(value.shape)} but ours, {target}, has "
                    f"{tuple(ours[target].shape)}: "
                    "build BYOL with their network, hidden_layer, projection_size and projection_hidden_size"
                )
            mapping[target] = value
    missing = tuple(key for key in ours if key not in mapping and not key.endswith("_extra_state"))
    return mapping, tuple(unmapped), missing, "; ".join(notes)


def load_mapped(
    theirs: Mapping[str, Tensor], ours: Mapping[str, Tensor], our_simplicial: bool, strict: bool
) -> tuple[ByolPytorchLoad, bool]:
    """Copy byol-pytorch's tensors into `ours` (a learner's `state_dict()`, sharing its tensors) by `plan`.

    Returns (what was loaded and not, whether their target was loaded); logs a warning when anything
    was not, or with `strict` raises LearnerError instead and loads nothing.
    """
    mapping, unmapped, missing, notes = plan(theirs, ours, our_simplicial)
    report = ByolPytorchLoad(loaded=len(mapping), unmapped=unmapped, missing=missing, notes=notes)
    if unmapped or missing:
        summary = (
            f"could not map {len(unmapped)} of byol-pytorch's tensors ({', '.join(unmapped[:3])}"
            f"{', ...' if len(unmapped) > 3 else ''}); {len(missing)} of ours keep their values ({notes})"
        )
        if strict:
            raise LearnerError(summary)
        log.warning("byol-pytorch state: %s", summary)
    for key, value in mapping.items():
        ours[key].copy_(value)
    return report, any(key.startswith("target.") for key in mapping)


def _our_keys(key: str, their_simplicial: bool, our_simplicial: bool, has_target: bool) -> list[str]:
    """Our keys for their `key` (two when their missing target is to be filled from their online branch)."""
    if key.startswith("online_predictor."):
        return [f"predictor.layers.{key[len('online_predictor.') :]}"]
    if key.startswith("net."):  # only the bare net, without online_encoder.net.*: it is the online encoder
        key = f"online_encoder.{key}"
    for their_prefix, our_prefix in _ENCODERS:
        if not key.startswith(their_prefix):
            continue
        rest = key[len(their_prefix) :]
        if rest.startswith("net."):
            suffix: Optional[str] = f"backbone.{rest}"
        elif rest.startswith("projector.") and their_simplicial == our_simplicial:
            suffix = _projector_key(rest[len("projector.") :], their_simplicial)
        else:
            suffix = None
        if suffix is None:
            return []
        prefixes = [our_prefix] + (["target."] if our_prefix == "online." and not has_target else [])
        return [prefix + suffix for prefix in prefixes]
    return []
