"""Every registered eviction policy keeps the contract the replay buffer relies on (timm's test_models pattern:
one parametrized test over the registry, so a new policy file is tested by being registered)."""

from __future__ import annotations

import io
import typing

import numpy as np
import pytest
import torch

from agent.core.config import BufferConfig
from agent.core.errors import ConfigError
from agent.core.wire import Frame
from trainer.buffer import ReplayBuffer
from trainer.eviction import EvictionPolicy, list_policies, make_policy

SHAPE = (4, 4, 3)
CAPACITY = 6


def frames(n: int, seed: int = 0) -> list[Frame]:
    rng = np.random.default_rng(seed)
    return [
        Frame(camera_id=i % 2, seq=i, timestamp=float(i), image=rng.integers(0, 256, SHAPE, dtype=np.uint8))
        for i in range(n)
    ]


def fill(buf: ReplayBuffer, n: int) -> None:
    """Add `n` frames, embedding whatever the policy asks for along the way (as the trainer does)."""
    for f in frames(n):
        buf.add(f)
        wanted = buf.frames_to_embed(4)
        if wanted is not None:
            slots, tickets, images = wanted
            assert buf.set_embeddings(slots, tickets, images.reshape(len(slots), -1).float()) == len(slots)


def test_the_registry_holds_exactly_the_configurable_policies():
    configurable = typing.get_args(BufferConfig.model_fields["policy"].annotation)
    assert list_policies() == sorted(configurable)
    with pytest.raises(
        ConfigError, match="not a registered policy; known: fifo, min_redundancy, reservoir, stratified"
    ):
        make_policy(BufferConfig.model_construct(policy="lru"), CAPACITY, 0)


@pytest.mark.parametrize("name", list_policies())
def test_policy_contract(name: str):
    policy = make_policy(BufferConfig(policy=name), CAPACITY, seed=0)
    assert isinstance(policy, EvictionPolicy) and policy.name == name and isinstance(policy.needs_embeddings, bool)

    buf = ReplayBuffer(BufferConfig(policy=name, capacity_frames=CAPACITY, min_fill=2), SHAPE, torch.device("cpu"))
    fill(buf, 4 * CAPACITY)
    stats = buf.stats()
    assert stats["size"] == CAPACITY and stats["frames_seen"] == 4 * CAPACITY
    assert (
        stats["evictions"] + stats["rejected"] == 3 * CAPACITY
    )  # every frame past capacity replaced one or was dropped
    if buf.wants_embeddings:
        assert stats["embedded"] >= 2  # the policy kept what it was handed
    else:
        assert buf.frames_to_embed(4) is None and "embedded" not in stats

    # saved and restored with the buffer's frames, through a weights-only load
    blob = io.BytesIO()
    torch.save(buf.state_dict(), blob)
    blob.seek(0)
    again = ReplayBuffer(BufferConfig(policy=name, capacity_frames=CAPACITY, min_fill=2), SHAPE, torch.device("cpu"))
    again.load_state_dict(torch.load(blob, weights_only=True))
    assert again.stats()["size"] == CAPACITY and again.stats().get("embedded") == stats.get("embedded")
    fill(again, CAPACITY)
    assert again.stats()["size"] == CAPACITY
